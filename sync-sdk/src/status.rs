//! What every replica of an app is doing, in Redis, where operators and the wrapper can read it
//! without reaching the replica: its consumer's health (live readers, lag, pending, parked
//! tenants), the re-syncs it is retrying and how many tenants its store holds.
//!
//! - [`StatusReporter`] writes one replica's [`ReplicaStatus`] into the app's status hash
//!   ([`StreamKeys::status`]) every few seconds. A report carries the time it was written;
//!   readers ([`read`]) skip reports older than [`FRESH_FOR`] and delete them, so a replica
//!   that died drops out on its own.
//! - [`ResyncJournal`] keeps the re-syncs an app has requested and not yet finished in Redis
//!   ([`StreamKeys::resyncs`]), each with the replica retrying it. A re-sync outlives the
//!   process that asked for it: the reporter of a live replica takes over the re-syncs whose
//!   replica no longer reports, instead of leaving the tenant wrong until the nightly sync.
//!
//! `tsync status` prints both.

use std::{collections::HashSet, sync::Arc, time::Duration};

use fred::prelude::*;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    consumer::{Consumer, Handler, HealthReport},
    contract::StreamKeys,
    loader::{Loader, ResyncJournal},
    store::TenantStore,
};

/// How often a replica writes its report.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// How long a report counts as the replica's current state; a replica silent for longer is
/// taken for dead (its re-syncs are taken over).
pub const FRESH_FOR: Duration = Duration::from_secs(20);

/// One replica's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// The app (its consumer group).
    pub app: String,
    /// The replica: its consumer name in the group.
    pub replica: String,
    /// When the report was written (Unix milliseconds).
    pub reported_at_ms: u64,
    /// The consumer: readiness, and per partition live reader, restarts, lag, pending, parked.
    pub health: HealthReport,
    /// Tenants whose re-sync this replica is retrying.
    pub resyncs: Vec<Uuid>,
    /// Tenants loaded into the replica's store (None if the store did not answer).
    pub tenants_loaded: Option<usize>,
}

impl ReplicaStatus {
    /// Milliseconds since the report was written.
    pub fn age_ms(&self) -> u64 {
        now_ms().saturating_sub(self.reported_at_ms)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The reports of `app`'s replicas written in the last [`FRESH_FOR`], by replica name; older
/// ones are deleted.
pub async fn read(
    redis: &Client,
    keys: &StreamKeys,
    app: &str,
) -> Result<Vec<ReplicaStatus>, Error> {
    read_fresh(redis, keys, app, FRESH_FOR).await
}

/// The reports of `app`'s replicas written in the last `fresh_for`; older ones are deleted.
pub async fn read_fresh(
    redis: &Client,
    keys: &StreamKeys,
    app: &str,
    fresh_for: Duration,
) -> Result<Vec<ReplicaStatus>, Error> {
    let key = keys.status(app);
    let all: std::collections::HashMap<String, String> = redis.hgetall(&key).await?;
    let mut fresh = Vec::new();
    let mut stale = Vec::new();
    for (replica, json) in all {
        match serde_json::from_str::<ReplicaStatus>(&json) {
            Ok(s) if s.age_ms() <= fresh_for.as_millis() as u64 => fresh.push(s),
            _ => stale.push(replica),
        }
    }
    if !stale.is_empty() {
        let _: i64 = redis.hdel(&key, stale).await?;
    }
    fresh.sort_by(|a, b| a.replica.cmp(&b.replica));
    Ok(fresh)
}

/// Writes one replica's report every [`REPORT_EVERY`] and takes over the re-syncs of replicas
/// that stopped reporting.
pub struct StatusReporter<S, H> {
    redis: Client,
    keys: StreamKeys,
    consumer: Arc<Consumer<S, H>>,
    loader: Arc<Loader<S>>,
    store: Arc<S>,
    journal: ResyncJournal,
    every: Duration,
    fresh_for: Duration,
}

impl<S: TenantStore, H: Handler> StatusReporter<S, H> {
    /// A reporter for `consumer`'s replica; wires `loader` to journal its re-syncs.
    pub fn new(
        redis: Client,
        consumer: Arc<Consumer<S, H>>,
        loader: Arc<Loader<S>>,
        store: Arc<S>,
    ) -> Self {
        let config = consumer.config();
        let keys = config.keys.clone();
        let journal = ResyncJournal::new(redis.clone(), &keys, &config.app, &config.consumer);
        loader.journal_resyncs(journal.clone());
        Self {
            redis,
            keys,
            consumer,
            loader,
            store,
            journal,
            every: REPORT_EVERY,
            fresh_for: FRESH_FOR,
        }
    }

    /// Report every `every` and take a replica silent for `fresh_for` for dead (defaults
    /// [`REPORT_EVERY`] and [`FRESH_FOR`]; `fresh_for` should be several times `every`).
    pub fn with_timing(mut self, every: Duration, fresh_for: Duration) -> Self {
        self.every = every;
        self.fresh_for = fresh_for;
        self
    }

    /// This replica's report now.
    pub async fn status(&self) -> ReplicaStatus {
        let config = self.consumer.config();
        let mut resyncs = self.loader.pending_resyncs();
        resyncs.sort();
        let status = ReplicaStatus {
            app: config.app.clone(),
            replica: config.consumer.clone(),
            reported_at_ms: now_ms(),
            health: self.consumer.health_report().await,
            resyncs,
            tenants_loaded: self.store.loaded_count().await.ok().map(|n| n as usize),
        };
        self.export_gauges(&status).await;
        status
    }

    /// The report as gauges, for dashboards (labels: app and partition, both bounded).
    async fn export_gauges(&self, status: &ReplicaStatus) {
        let app = status.app.clone();
        for p in &status.health.partitions {
            let labels = [("app", app.clone()), ("partition", p.partition.to_string())];
            metrics::gauge!("tsync_consumer_reader_alive", &labels)
                .set(f64::from(u8::from(p.alive)));
            if let Some(lag) = p.lag {
                metrics::gauge!("tsync_consumer_group_lag", &labels).set(lag as f64);
            }
            let oldest = p.oldest_pending_age_ms.unwrap_or(0) as f64 / 1000.0;
            metrics::gauge!("tsync_consumer_oldest_pending_age_seconds", &labels).set(oldest);
        }
        if let Some(loaded) = status.tenants_loaded {
            metrics::gauge!("tsync_store_tenants_loaded", "app" => app.clone()).set(loaded as f64);
        }
        let dead: Result<u64, Error> = self.redis.xlen(self.keys.dlq(&app)).await;
        if let Ok(dead) = dead {
            metrics::gauge!("tsync_dlq_entries", "app" => app).set(dead as f64);
        }
    }

    /// Write the report once, then take over orphaned re-syncs.
    pub async fn tick(&self) -> Result<(), Error> {
        self.report().await.map(drop)
    }

    /// [`tick`](Self::tick), answering whether the replica reported itself ready.
    async fn report(&self) -> Result<bool, Error> {
        let status = self.status().await;
        let ready = status.health.ready;
        let json = serde_json::to_string(&status).expect("a status report serialises");
        let key = self.keys.status(&status.app);
        let _: i64 = self
            .redis
            .hset(&key, (status.replica.as_str(), json))
            .await?;
        let live: HashSet<String> =
            read_fresh(&self.redis, &self.keys, &status.app, self.fresh_for)
                .await?
                .into_iter()
                .map(|s| s.replica)
                .collect();
        for tenant in self.journal.orphaned(&live).await? {
            tracing::info!(%tenant, "re-sync of a replica that stopped reporting: taking it over");
            self.loader.request_resync(tenant);
        }
        Ok(ready)
    }

    /// Report periodically until `cancel` fires, then remove this replica's report. While the
    /// replica is not ready (starting, a reader down) it reports five times as often, so the
    /// report that says it recovered — or that a starting replica's readers now run — follows
    /// within a fifth of the interval instead of a whole one.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let pause = match self.report().await {
                Ok(true) => self.every,
                Ok(false) => self.every / 5,
                Err(e) => {
                    tracing::warn!(error = %e, "status report failed");
                    self.every
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        let config = self.consumer.config();
        let _: Result<i64, Error> = self
            .redis
            .hdel(self.keys.status(&config.app), config.consumer.as_str())
            .await;
    }
}

/// A re-sync not done yet, and the replica retrying it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingResync {
    /// The tenant.
    pub tenant_id: Uuid,
    /// The replica retrying it (one that no longer reports has its re-syncs taken over).
    pub replica: String,
}

/// Everything Redis knows about an app's sync: what `tsync status` prints.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    /// The app.
    pub app: String,
    /// Its live replicas' reports.
    pub replicas: Vec<ReplicaStatus>,
    /// Re-syncs not done yet, across replicas.
    pub resyncs: Vec<PendingResync>,
    /// Entries in its dead-letter queue.
    pub dead_letters: u64,
}

impl AppStatus {
    /// Read `app`'s status now.
    pub async fn read(redis: &Client, keys: &StreamKeys, app: &str) -> Result<Self, Error> {
        let journal = ResyncJournal::new(redis.clone(), keys, app, "");
        let mut resyncs: Vec<PendingResync> = journal
            .pending()
            .await?
            .into_iter()
            .map(|(tenant_id, replica)| PendingResync { tenant_id, replica })
            .collect();
        resyncs.sort_by_key(|r| r.tenant_id);
        Ok(Self {
            app: app.to_owned(),
            replicas: read(redis, keys, app).await?,
            resyncs,
            dead_letters: redis.xlen(keys.dlq(app)).await?,
        })
    }
}

impl std::fmt::Display for AppStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ready = self.replicas.iter().filter(|r| r.health.ready).count();
        writeln!(
            f,
            "{}: {} replica(s) reporting, {ready} ready; {} re-sync(s) pending; {} dead letter(s)",
            self.app,
            self.replicas.len(),
            self.resyncs.len(),
            self.dead_letters
        )?;
        let opt = |v: Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
        for r in &self.replicas {
            let loaded = r.tenants_loaded.map_or("?".to_owned(), |n| n.to_string());
            let state = if r.health.ready { "ready" } else { "NOT READY" };
            writeln!(
                f,
                "  {}  {state}  reported {} ms ago  tenants loaded {loaded}",
                r.replica,
                r.age_ms()
            )?;
            for reason in &r.health.reasons {
                writeln!(f, "    ! {reason}")?;
            }
            writeln!(
                f,
                "    {:>9} {:>6} {:>8} {:>8} {:>14} {:>8}  parked",
                "partition", "reader", "lag", "pending", "oldest (ms)", "restarts"
            )?;
            for p in &r.health.partitions {
                let parked: Vec<String> = p
                    .parked
                    .iter()
                    .map(|t| format!("{} ({}, {} entries)", t.tenant_id, t.reason, t.entries))
                    .collect();
                writeln!(
                    f,
                    "    {:>9} {:>6} {:>8} {:>8} {:>14} {:>8}  {}",
                    p.partition,
                    if p.alive { "live" } else { "DEAD" },
                    opt(p.lag),
                    opt(p.pending),
                    opt(p.oldest_pending_age_ms),
                    p.restarts,
                    if parked.is_empty() {
                        "-".to_owned()
                    } else {
                        parked.join(", ")
                    }
                )?;
            }
        }
        for r in &self.resyncs {
            writeln!(
                f,
                "  re-sync pending: tenant {} (replica {})",
                r.tenant_id, r.replica
            )?;
        }
        Ok(())
    }
}
