//! The stream consumer: keeps an app's [`TenantStore`] current from the partition streams.
//!
//! Guarantees (docs/architecture.md, invariants 2, 3, 6, 7):
//! * **One consumer group per app** on every partition, created on start; consumer names are
//!   unique per process. Each partition is read in order by one reader task; partitions run
//!   concurrently.
//! * **Batched, idempotent, version-gated apply.** A reader takes up to [`ConsumerConfig::batch`]
//!   entries at a time, runs the handler over them ([`Handler::handle_batch`]) and applies them
//!   in one store transaction ([`TenantStore::apply_batch`]): every event id is recorded
//!   together with its effect, state is written by `aggregateVersion`, and the batch is
//!   acknowledged with one XACK after the commit. Events at or below a tenant's snapshot
//!   watermark are skipped; events of tenants never loaded are acknowledged and ignored.
//! * **Handlers run at least once**, before the store records the event; a crash in between
//!   runs them again, so handlers must be idempotent.
//! * **One event cannot take a batch down, and one tenant cannot stall a partition.** When an
//!   event fails, its tenant is *parked* from that event on: its later events wait in order
//!   (still pending in Redis) while every other tenant of the partition keeps flowing, and the
//!   parked tenant is retried with backoff (`consumer/batch.rs`). A handler error counts towards
//!   [`ConsumerConfig::max_attempts`]; then, or at once for a permanent error or an entry that
//!   does not decode, the entry is dead-lettered ([`crate::dlq`]) and the tenant moves on.
//!   Transient *store* errors (write conflicts, a lost connection) are not the event's fault:
//!   they are retried without limit and never dead-letter a valid event.
//! * **Loads and the consumer take turns.** A tenant whose load or re-sync is running or
//!   pending ([`Resync::claim`]) is parked until it finishes; its events at or below the new
//!   watermark are then skipped.
//! * **Gaps are repaired.** An event whose seq is beyond the tenant's last seq + 1 parks the
//!   tenant for a short window (another replica may be applying the missing one), then the
//!   tenant is handed to [`Resync::request`], which retries until the re-sync succeeds.
//! * **Readers are supervised.** A reader that panics is restarted with backoff, counted
//!   (`tsync_consumer_restarts_total`) and logged with the cause; the restarted reader first
//!   takes back the entries its predecessor had read. [`Consumer::health_report`] says whether
//!   every partition has a live reader, with lag and oldest pending age per partition (the apps
//!   serve it as `/health/ready`).
//! * **Crashed consumers are taken over.** Entries pending longer than the visibility timeout
//!   are claimed with XAUTOCLAIM; one delivered more than `max_deliveries` times is
//!   dead-lettered. A parked tenant's entries are kept claimed by their reader meanwhile.
//! * **Graceful shutdown.** On cancellation no new entries are read; what was read is finished
//!   and acknowledged (entries of parked tenants stay pending, to be claimed after a restart).

mod batch;
mod health;

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use fred::prelude::*;
use rand::Rng;
pub use sync_contract::streams::read_group;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

pub use health::{ConsumerHealth, HealthReport, ParkedTenant, PartitionReport};

use crate::{
    contract::{Envelope, StreamKeys},
    dlq::{self, DeadLetter},
    store::TenantStore,
};

/// How a handler failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying (a timeout, a dependency down).
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying will not help (invalid data for this app); dead-letter at once.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// The app's reaction to events (e.g. CRM refreshing a cached owner name). The event is typed:
/// match on [`crate::contract::Event`]. Runs at least once per event: make it idempotent.
pub trait Handler: Send + Sync + 'static {
    /// React to one event before the store records it.
    fn handle(&self, envelope: &Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// React to a batch of one partition's events (several tenants, each tenant's events in
    /// order) before the store records them; one result per event. Override it to do the work
    /// of many events at once (one bulk write instead of one per event). After a tenant's
    /// first failure the results of its later events are ignored: they are handled again once
    /// the failed event succeeds or is dead-lettered. The default runs [`handle`](Self::handle)
    /// event by event and stops a tenant at its first failure.
    fn handle_batch(
        &self,
        envelopes: &[Envelope],
    ) -> impl Future<Output = Vec<Result<(), HandlerError>>> + Send {
        async move {
            let mut failed = std::collections::HashSet::new();
            let mut results = Vec::with_capacity(envelopes.len());
            for e in envelopes {
                if failed.contains(&e.tenant_id) {
                    results.push(Err(HandlerError::Transient(
                        "not run: an earlier event of the tenant failed".into(),
                    )));
                    continue;
                }
                let result = self.handle(e).await;
                if result.is_err() {
                    failed.insert(e.tenant_id);
                }
                results.push(result);
            }
            results
        }
    }
}

/// A handler that does nothing (the store alone keeps the copy current).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHandler;

impl Handler for NoHandler {
    async fn handle(&self, _: &Envelope) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn handle_batch(&self, envelopes: &[Envelope]) -> Vec<Result<(), HandlerError>> {
        vec![Ok(()); envelopes.len()]
    }
}

/// The consumer's right to apply a tenant's events now; dropping it lets a load start.
#[derive(Debug, Default)]
pub struct TenantTurn {
    _held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl TenantTurn {
    /// A turn that excludes nothing (no loader to take turns with).
    pub fn free() -> Self {
        Self { _held: None }
    }

    /// A turn held by a lock that loads of the tenant also take.
    pub fn held(guard: tokio::sync::OwnedMutexGuard<()>) -> Self {
        Self { _held: Some(guard) }
    }
}

/// Re-syncing tenants, and taking turns with the consumer. The loader implements it
/// ([`crate::loader::Loader::resync_hook`]); a plain `Fn(Uuid)` is a hook that only gets told.
pub trait Resync: Send + Sync + 'static {
    /// Re-sync the tenant (returns at once; the re-sync keeps retrying until it succeeds).
    fn request(&self, tenant_id: Uuid);

    /// The consumer's turn on the tenant, or None while a load or re-sync of it is running or
    /// pending (the consumer then parks the tenant's events until it has finished).
    fn claim(&self, _tenant_id: Uuid) -> Option<TenantTurn> {
        Some(TenantTurn::free())
    }

    /// How many re-syncs are pending (requested, not yet succeeded).
    fn pending(&self) -> usize {
        0
    }
}

impl<F: Fn(Uuid) + Send + Sync + 'static> Resync for F {
    fn request(&self, tenant_id: Uuid) {
        self(tenant_id)
    }
}

/// What the consumer asks to re-sync tenants, and takes turns with.
pub type ResyncHook = Arc<dyn Resync>;

/// Consumer settings.
#[derive(Clone)]
pub struct ConsumerConfig {
    /// The app, which is also the consumer group, e.g. `crm`.
    pub app: String,
    /// This consumer's name, unique per process.
    pub consumer: String,
    /// Stream keys (namespace and partition count).
    pub keys: StreamKeys,
    /// Entries per XREADGROUP, applied in one store transaction.
    pub batch: u64,
    /// How long one XREADGROUP blocks (also bounds shutdown latency).
    pub block: Duration,
    /// Handler tries before an entry is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay (doubles, with jitter).
    pub retry_base: Duration,
    /// The longest wait between retries of a store failure.
    pub retry_cap: Duration,
    /// Entries pending longer than this are claimed from their consumer.
    pub visibility_timeout: Duration,
    /// How often to look for entries to claim.
    pub claim_interval: Duration,
    /// An entry delivered more often than this is dead-lettered.
    pub max_deliveries: u64,
    /// How long a gap may stay open before the tenant is re-synced.
    pub gap_wait: Duration,
    /// First delay before a dead reader is restarted (doubles up to 30 s).
    pub restart_backoff: Duration,
    /// Entries of parked tenants a reader keeps before it stops reading new ones.
    pub max_parked: usize,
    /// Re-syncs tenants (gaps) and takes turns with their loads.
    pub resync: Option<ResyncHook>,
}

impl ConsumerConfig {
    /// Defaults for `app`: batches of 1,000, 1 s block, 3 handler tries from 100 ms, store retries
    /// up to 5 s apart, 30 s visibility, restarts from 1 s.
    pub fn new(app: impl Into<String>, keys: StreamKeys) -> Self {
        let app = app.into();
        Self {
            consumer: format!("{app}-{}", Uuid::now_v7().simple()),
            app,
            keys,
            batch: 1_000,
            block: Duration::from_secs(1),
            max_attempts: 3,
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(5),
            visibility_timeout: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            max_deliveries: 10,
            gap_wait: Duration::from_secs(2),
            restart_backoff: Duration::from_secs(1),
            max_parked: 10_000,
            resync: None,
        }
    }
}

impl std::fmt::Debug for ConsumerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerConfig")
            .field("app", &self.app)
            .field("consumer", &self.consumer)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Keeps a store current from the streams.
pub struct Consumer<S, H> {
    redis: Client,
    store: Arc<S>,
    handler: Arc<H>,
    config: ConsumerConfig,
    health: Arc<ConsumerHealth>,
}

/// A stream entry: id and fields.
type Entry = (String, HashMap<String, String>);

impl<S: TenantStore, H: Handler> Consumer<S, H> {
    /// A consumer of `config.app`'s group.
    pub fn new(redis: Client, store: Arc<S>, handler: Arc<H>, config: ConsumerConfig) -> Arc<Self> {
        let health = Arc::new(ConsumerHealth::new(
            config.keys.partitions(),
            config.resync.clone(),
        ));
        Arc::new(Self {
            redis,
            store,
            handler,
            config,
            health,
        })
    }

    /// The consumer's settings (its app, its name in the group, its keys).
    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// The readers' liveness and parked tenants (see [`health_report`](Self::health_report)).
    pub fn health(&self) -> Arc<ConsumerHealth> {
        self.health.clone()
    }

    /// Create the app's group on every partition (idempotent).
    pub async fn ensure_groups(&self) -> Result<(), Error> {
        for stream in self.config.keys.all_events() {
            let created: Result<(), Error> = self
                .redis
                .xgroup_create(&stream, self.config.app.as_str(), "0", true)
                .await;
            match created {
                Err(e) if !e.details().contains("BUSYGROUP") => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Consume until `cancel` fires; returns once every partition reader finished its batch.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<(), Error> {
        self.ensure_groups().await?;
        self.health.set_running(true);
        let mut tasks = JoinSet::new();
        for partition in 0..self.config.keys.partitions() {
            tasks.spawn(self.clone().supervise(partition, cancel.clone()));
        }
        while tasks.join_next().await.is_some() {}
        self.health.set_running(false);
        Ok(())
    }

    /// Run the partition's reader, restarting it with backoff whenever it dies.
    async fn supervise(self: Arc<Self>, partition: u32, cancel: CancellationToken) {
        let mut restarts = 0u32;
        loop {
            let started = tokio::time::Instant::now();
            let span = tracing::info_span!("partition_reader", app = %self.config.app, partition);
            let reader = tokio::spawn(
                self.clone()
                    .read_partition(partition, cancel.clone())
                    .instrument(span),
            );
            let ended = reader.await;
            self.health.partition(partition).set_alive(false);
            let cause = match ended {
                Ok(()) if cancel.is_cancelled() => return,
                Ok(()) => "the reader returned".to_owned(),
                Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
                Err(e) => format!("ended: {e}"),
            };
            if started.elapsed() > Duration::from_secs(60) {
                restarts = 0;
            }
            restarts += 1;
            let delay = backoff(self.config.restart_backoff, restarts).min(Duration::from_secs(30));
            self.health.partition(partition).record_death(&cause);
            metrics::counter!("tsync_consumer_restarts_total", "app" => self.config.app.clone(),
                "partition" => partition.to_string())
            .increment(1);
            tracing::error!(app = %self.config.app, partition, %cause, ?delay, "consumer: partition reader died; restarting");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {},
            }
        }
    }

    async fn read_partition(self: Arc<Self>, partition: u32, cancel: CancellationToken) {
        let mut part = batch::Partition::new(self.config.keys.events(partition), partition);
        // A blocking XREADGROUP holds its connection until it returns, so each partition reads
        // on a connection of its own; everything else shares the app's client.
        let reader = self.redis.clone_new();
        let _connection = reader.connect();
        let mut last_claim = tokio::time::Instant::now() - self.config.claim_interval;
        let mut failures = 0u32;
        let mut recovered = false;
        self.health.partition(partition).set_alive(true);
        while !cancel.is_cancelled() {
            if !recovered {
                // Entries a dead predecessor of this reader had read are still ours.
                match self.recover_own(&mut part).await {
                    Ok(()) => recovered = true,
                    Err(e) => {
                        tracing::warn!(stream = %part.stream, error = %e, "consumer: could not take back pending entries")
                    }
                }
            }
            if last_claim.elapsed() >= self.config.claim_interval {
                self.keep_parked_claimed(&part).await;
                if let Err(e) = self.claim_stale(&mut part).await {
                    tracing::warn!(stream = %part.stream, error = %e, "consumer: claim failed");
                }
                self.record_pending(&part.stream, partition).await;
                last_claim = tokio::time::Instant::now();
            }
            self.retry_parked(&mut part).await;
            self.health
                .partition(partition)
                .record_parked(&self.config.app, &part);
            let wait = part.wait(self.config.block);
            if part.parked_entries() >= self.config.max_parked {
                // Back-pressure: let the parked tenants drain before reading more.
                tokio::select! {
                    _ = cancel.cancelled() => {},
                    _ = tokio::time::sleep(wait) => {},
                }
                continue;
            }
            let read = read_group(
                &reader,
                &self.config.app,
                &self.config.consumer,
                &part.stream,
                self.config.batch,
                Some(wait),
            )
            .await;
            match read {
                Ok(entries) => {
                    failures = 0;
                    // Finish the whole batch even if cancellation arrives meanwhile: what was
                    // read must be acknowledged, not left pending.
                    let entries = entries.into_iter().map(|e| (e, 1)).collect();
                    self.process_entries(&mut part, entries).await;
                }
                Err(e) => {
                    failures += 1;
                    let delay =
                        backoff(Duration::from_millis(100), failures).min(Duration::from_secs(5));
                    tracing::warn!(stream = %part.stream, error = %e, ?delay, "consumer: read failed");
                    tokio::select! {
                        _ = cancel.cancelled() => {},
                        _ = tokio::time::sleep(delay) => {},
                    }
                }
            }
        }
        let _ = reader.quit().await;
    }

    /// Take back (XCLAIM, which counts a delivery) the entries this consumer had read on the
    /// partition and not finished, and process them.
    async fn recover_own(&self, part: &mut batch::Partition) -> Result<(), Error> {
        let mut start = "-".to_owned();
        loop {
            let rows: Vec<(String, String, u64, u64)> = self
                .redis
                .xpending(
                    &part.stream,
                    self.config.app.as_str(),
                    (
                        start.as_str(),
                        "+",
                        self.config.batch,
                        self.config.consumer.as_str(),
                    ),
                )
                .await?;
            let Some(last) = rows.last() else {
                return Ok(());
            };
            start = format!("({}", last.0);
            let ids: Vec<String> = rows
                .iter()
                .map(|r| r.0.clone())
                .filter(|id| !part.holds(id))
                .collect();
            if ids.is_empty() {
                continue;
            }
            let deliveries: HashMap<String, u64> =
                rows.iter().map(|r| (r.0.clone(), r.3)).collect();
            let entries: Vec<Entry> = self
                .redis
                .xclaim_values(
                    &part.stream,
                    self.config.app.as_str(),
                    self.config.consumer.as_str(),
                    0,
                    ids,
                    None,
                    None,
                    None,
                    false,
                    false,
                )
                .await?;
            let entries = entries
                .into_iter()
                .map(|e| {
                    let n = deliveries.get(&e.0).copied().unwrap_or(1) + 1;
                    (e, n)
                })
                .collect();
            self.process_entries(part, entries).await;
        }
    }

    /// Reset the idle time of parked tenants' entries (XCLAIM JUSTID to ourselves, which counts
    /// no delivery), so no other consumer claims them while they wait here in order.
    async fn keep_parked_claimed(&self, part: &batch::Partition) {
        let ids = part.parked_ids();
        for chunk in ids.chunks(1_000) {
            let kept: Result<fred::types::Value, Error> = self
                .redis
                .xclaim(
                    &part.stream,
                    self.config.app.as_str(),
                    self.config.consumer.as_str(),
                    0,
                    chunk.to_vec(),
                    None,
                    None,
                    None,
                    false,
                    true,
                )
                .await;
            if let Err(e) = kept {
                tracing::warn!(stream = %part.stream, error = %e, "consumer: could not keep parked entries claimed");
            }
        }
    }

    /// Claim entries other consumers left pending past the visibility timeout, and process them.
    async fn claim_stale(&self, part: &mut batch::Partition) -> Result<usize, Error> {
        let mut start = "0-0".to_owned();
        let mut claimed = 0;
        loop {
            let (next, entries): (String, Vec<Entry>) = self
                .redis
                .xautoclaim_values(
                    &part.stream,
                    self.config.app.as_str(),
                    self.config.consumer.as_str(),
                    self.config.visibility_timeout.as_millis() as u64,
                    start.as_str(),
                    Some(self.config.batch),
                    false,
                )
                .await?;
            let mut batch = Vec::new();
            for entry in entries.into_iter().filter(|e| !part.holds(&e.0)) {
                claimed += 1;
                let deliveries = self
                    .delivery_count(&part.stream, &entry.0)
                    .await
                    .unwrap_or(1);
                metrics::counter!("tsync_consumer_claimed_total", "app" => self.config.app.clone())
                    .increment(1);
                batch.push((entry, deliveries));
            }
            self.process_entries(part, batch).await;
            if next == "0-0" {
                return Ok(claimed);
            }
            start = next;
        }
    }

    async fn record_pending(&self, stream: &str, partition: u32) {
        let summary: Result<Vec<fred::types::Value>, Error> = self
            .redis
            .xpending(stream, self.config.app.as_str(), ())
            .await;
        if let Some(count) = summary
            .ok()
            .and_then(|s| s.first().and_then(|v| v.as_u64()))
        {
            metrics::gauge!("tsync_consumer_pending", "app" => self.config.app.clone(),
                "partition" => partition.to_string())
            .set(count as f64);
        }
    }

    async fn delivery_count(&self, stream: &str, id: &str) -> Result<u64, Error> {
        let rows: Vec<(String, String, u64, u64)> = self
            .redis
            .xpending(stream, self.config.app.as_str(), (id, id, 1))
            .await?;
        Ok(rows.first().map_or(1, |r| r.3))
    }

    async fn ack(&self, stream: &str, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let acked: Result<u64, Error> =
            self.redis.xack(stream, self.config.app.as_str(), ids).await;
        if let Err(e) = acked {
            // Left pending: they will be claimed and found processed.
            tracing::warn!(%stream, error = %e, "consumer: ack failed");
        }
    }

    /// Write the entry to the DLQ (retrying: acknowledging without it would lose the entry);
    /// the caller acknowledges it.
    async fn dead_letter(&self, stream: &str, entry: &Entry, error: String, attempts: u32) {
        let letter = DeadLetter::new(stream, &entry.0, &entry.1, error, attempts);
        metrics::counter!("tsync_consumer_dead_lettered_total", "app" => self.config.app.clone(),
            "event_type" => letter.event_type.clone().unwrap_or_default())
        .increment(1);
        tracing::warn!(%stream, id = %entry.0, error = %letter.error, attempts, "consumer: dead-lettered");
        let mut tries = 0;
        while let Err(e) =
            dlq::push(&self.redis, &self.config.keys, &self.config.app, &letter).await
        {
            tries += 1;
            tracing::warn!(error = %e, "consumer: DLQ write failed; retrying");
            tokio::time::sleep(
                backoff(Duration::from_millis(100), tries).min(Duration::from_secs(5)),
            )
            .await;
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".to_owned())
}

/// `base * 2^(attempt-1)`, with jitter in [50 %, 100 %].
fn backoff(base: Duration, attempt: u32) -> Duration {
    let full = base.saturating_mul(1 << attempt.saturating_sub(1).min(10));
    let ms = full.as_millis().max(1) as u64;
    Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms))
}
