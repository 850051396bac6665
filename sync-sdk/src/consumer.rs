//! The stream consumer: keeps an app's [`TenantStore`] current from the partition streams.
//!
//! Guarantees (DESIGN.md invariants 2, 3, 6, 7):
//! * **One consumer group per app** on every partition, created on start; consumer names are
//!   unique per process. Each partition is read in order by one task; partitions run
//!   concurrently.
//! * **Idempotent, version-gated apply.** An event already processed is acknowledged and
//!   skipped; the store applies state by `aggregateVersion` and records the event id in the same
//!   transaction. Events at or below a tenant's snapshot watermark are skipped; events of tenants
//!   never loaded are acknowledged and ignored.
//! * **Handlers run at least once.** The app's [`Handler`] runs before the store records the
//!   event; a crash in between runs it again, so handlers must be idempotent.
//! * **Poison cannot block a partition.** Transient failures are retried with exponential
//!   backoff and jitter (3 tries by default); then, or at once for a permanent error or an entry
//!   that does not decode, the entry is dead-lettered ([`crate::dlq`]) and acknowledged.
//! * **Crashed consumers are taken over.** Entries pending longer than the visibility timeout
//!   are claimed with XAUTOCLAIM; one delivered more than `max_deliveries` times is
//!   dead-lettered.
//! * **Gaps are detected.** An event whose seq is beyond the tenant's last seq + 1 waits a short
//!   window for the missing one (another replica may be applying it), then the tenant is handed
//!   to the re-sync hook.
//! * **Graceful shutdown.** On cancellation no new entries are read; what was read is finished
//!   and acknowledged, so nothing stays pending for this consumer.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use fred::{prelude::*, types::streams::XReadResponse};
use rand::Rng;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    contract::{Envelope, StreamKeys},
    dlq::{self, DeadLetter},
    store::{Applied, TenantStore},
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
}

/// A handler that does nothing (the store alone keeps the copy current).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHandler;

impl Handler for NoHandler {
    async fn handle(&self, _: &Envelope) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Called with a tenant whose stream has a gap that did not fill: reload it.
pub type ResyncHook = Arc<dyn Fn(Uuid) + Send + Sync>;

/// Consumer settings.
#[derive(Clone)]
pub struct ConsumerConfig {
    /// The app, which is also the consumer group, e.g. `crm`.
    pub app: String,
    /// This consumer's name, unique per process.
    pub consumer: String,
    /// Stream keys (namespace and partition count).
    pub keys: StreamKeys,
    /// Entries per XREADGROUP.
    pub batch: u64,
    /// How long one XREADGROUP blocks (also bounds shutdown latency).
    pub block: Duration,
    /// Tries before an entry is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay (doubles, with jitter).
    pub retry_base: Duration,
    /// Entries pending longer than this are claimed from their consumer.
    pub visibility_timeout: Duration,
    /// How often to look for entries to claim.
    pub claim_interval: Duration,
    /// An entry delivered more often than this is dead-lettered.
    pub max_deliveries: u64,
    /// How long a gap may stay open before the tenant is re-synced.
    pub gap_wait: Duration,
    /// Called for tenants that need a re-sync.
    pub on_gap: Option<ResyncHook>,
}

impl ConsumerConfig {
    /// Defaults for `app`: batches of 100, 1 s block, 3 tries from 100 ms, 30 s visibility.
    pub fn new(app: impl Into<String>, keys: StreamKeys) -> Self {
        let app = app.into();
        Self {
            consumer: format!("{app}-{}", Uuid::now_v7().simple()),
            app,
            keys,
            batch: 100,
            block: Duration::from_secs(1),
            max_attempts: 3,
            retry_base: Duration::from_millis(100),
            visibility_timeout: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            max_deliveries: 10,
            gap_wait: Duration::from_secs(2),
            on_gap: None,
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
}

type Entry = (String, HashMap<String, String>);

impl<S: TenantStore, H: Handler> Consumer<S, H> {
    /// A consumer of `config.app`'s group.
    pub fn new(redis: Client, store: Arc<S>, handler: Arc<H>, config: ConsumerConfig) -> Arc<Self> {
        Arc::new(Self {
            redis,
            store,
            handler,
            config,
        })
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

    /// Consume until `cancel` fires; returns once every partition task finished its batch.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<(), Error> {
        self.ensure_groups().await?;
        let mut tasks = JoinSet::new();
        for partition in 0..self.config.keys.partitions() {
            tasks.spawn(self.clone().partition_loop(partition, cancel.clone()));
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    async fn partition_loop(self: Arc<Self>, partition: u32, cancel: CancellationToken) {
        let stream = self.config.keys.events(partition);
        // A blocking XREADGROUP holds its connection until it returns, so each partition reads
        // on a connection of its own; everything else shares the app's client.
        let reader = self.redis.clone_new();
        let _connection = reader.connect();
        let mut last_claim = tokio::time::Instant::now() - self.config.claim_interval;
        let mut failures = 0u32;
        while !cancel.is_cancelled() {
            if last_claim.elapsed() >= self.config.claim_interval {
                if let Err(e) = self.claim_stale(&stream).await {
                    tracing::warn!(%stream, error = %e, "consumer: claim failed");
                }
                self.record_pending(&stream, partition).await;
                last_claim = tokio::time::Instant::now();
            }
            let read = read_group(
                &reader,
                &self.config.app,
                &self.config.consumer,
                &stream,
                self.config.batch,
                Some(self.config.block),
            )
            .await;
            match read {
                Ok(entries) => {
                    failures = 0;
                    // Finish the whole batch even if cancellation arrives meanwhile: what was
                    // read must be acknowledged, not left pending. One XACK per batch: an entry
                    // processed but not yet acknowledged when the process dies is delivered
                    // again and found processed.
                    let mut done = Vec::with_capacity(entries.len());
                    for entry in entries {
                        if self.process(&stream, &entry, 1).await {
                            done.push(entry.0);
                        }
                    }
                    self.ack(&stream, done).await;
                }
                Err(e) => {
                    failures += 1;
                    let delay =
                        backoff(Duration::from_millis(100), failures).min(Duration::from_secs(5));
                    tracing::warn!(%stream, error = %e, ?delay, "consumer: read failed");
                    tokio::select! {
                        _ = cancel.cancelled() => {},
                        _ = tokio::time::sleep(delay) => {},
                    }
                }
            }
        }
        let _ = reader.quit().await;
    }

    /// Claim entries other consumers left pending past the visibility timeout, and process them.
    pub async fn claim_stale(&self, stream: &str) -> Result<usize, Error> {
        let mut start = "0-0".to_owned();
        let mut claimed = 0;
        loop {
            let (next, entries): (String, Vec<Entry>) = self
                .redis
                .xautoclaim_values(
                    stream,
                    self.config.app.as_str(),
                    self.config.consumer.as_str(),
                    self.config.visibility_timeout.as_millis() as u64,
                    start.as_str(),
                    Some(self.config.batch),
                    false,
                )
                .await?;
            for entry in entries {
                claimed += 1;
                let deliveries = self.delivery_count(stream, &entry.0).await.unwrap_or(1);
                metrics::counter!("tsync_consumer_claimed_total", "app" => self.config.app.clone())
                    .increment(1);
                if self.process(stream, &entry, deliveries).await {
                    self.ack(stream, vec![entry.0]).await;
                }
            }
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

    async fn dead_letter(&self, stream: &str, entry: &Entry, error: String, attempts: u32) {
        let letter = DeadLetter::new(stream, &entry.0, &entry.1, error, attempts);
        metrics::counter!("tsync_consumer_dead_lettered_total", "app" => self.config.app.clone(),
            "event_type" => letter.event_type.clone().unwrap_or_default())
        .increment(1);
        tracing::warn!(%stream, id = %entry.0, error = %letter.error, attempts, "consumer: dead-lettered");
        // Retry the DLQ write: acknowledging without it would lose the entry.
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
        self.ack(stream, vec![entry.0.clone()]).await;
    }

    /// Process one entry to the end: applied or skipped (returns true: the caller acknowledges
    /// it), or dead-lettered (acknowledged here, returns false).
    async fn process(&self, stream: &str, entry: &Entry, deliveries: u64) -> bool {
        let app = self.config.app.clone();
        let envelope = match Envelope::from_stream_fields(entry.1.iter()) {
            Ok(e) => e,
            Err(e) => {
                self.dead_letter(stream, entry, format!("undecodable entry: {e}"), 0)
                    .await;
                return false;
            }
        };
        let event_type = envelope.event_type().as_str();
        metrics::counter!("tsync_consumer_consumed_total", "app" => app.clone(), "event_type" => event_type).increment(1);
        if deliveries > self.config.max_deliveries {
            let reason = format!(
                "delivered {deliveries} times (limit {})",
                self.config.max_deliveries
            );
            self.dead_letter(stream, entry, reason, 0).await;
            return false;
        }
        let span = tracing::info_span!("event", event_id = %envelope.event_id, tenant_id = %envelope.tenant_id,
            correlation_id = envelope.correlation_id.as_deref().unwrap_or(""), event_type);
        let _guard = span.enter();
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match self.try_apply(&envelope).await {
                Ok(outcome) => break Ok(outcome),
                Err(HandlerError::Permanent(e)) => break Err(HandlerError::Permanent(e)),
                Err(e) if attempt >= self.config.max_attempts => break Err(e),
                Err(e) => {
                    let delay = backoff(self.config.retry_base, attempt);
                    tracing::info!(error = %e, attempt, ?delay, "consumer: retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        match outcome {
            Ok(label) => {
                metrics::counter!("tsync_consumer_events_total", "app" => app.clone(), "event_type" => event_type, "outcome" => label).increment(1);
                let lag = (chrono::Utc::now() - envelope.occurred_at)
                    .num_milliseconds()
                    .max(0) as f64
                    / 1000.0;
                metrics::histogram!("tsync_consumer_lag_seconds", "app" => app).record(lag);
                true
            }
            Err(e) => {
                metrics::counter!("tsync_consumer_events_total", "app" => app, "event_type" => event_type, "outcome" => "failed").increment(1);
                drop(_guard);
                self.dead_letter(stream, entry, e.to_string(), attempt)
                    .await;
                false
            }
        }
    }

    /// One attempt: skip what needs no work, wait out a gap, run the handler, apply.
    async fn try_apply(&self, envelope: &Envelope) -> Result<&'static str, HandlerError> {
        let transient = |e: crate::store::StoreError| HandlerError::Transient(e.to_string());
        let Some(sync) = self
            .store
            .sync_state(envelope.tenant_id)
            .await
            .map_err(transient)?
        else {
            return Ok("skipped_not_loaded");
        };
        if !sync.is_loading() && envelope.seq <= sync.snapshot_seq {
            return Ok("skipped_in_snapshot");
        }
        if self
            .store
            .is_processed(envelope.event_id)
            .await
            .map_err(transient)?
        {
            return Ok("duplicate");
        }
        if !sync.is_loading() && envelope.seq > sync.last_seq + 1 {
            self.wait_for_gap(envelope, sync.last_seq).await;
        }
        let started = std::time::Instant::now();
        self.handler.handle(envelope).await?;
        metrics::histogram!("tsync_consumer_handler_seconds", "app" => self.config.app.clone())
            .record(started.elapsed().as_secs_f64());
        Ok(match self.store.apply(envelope).await.map_err(transient)? {
            Applied::Applied => "applied",
            Applied::Stale => "stale",
            Applied::Duplicate => "duplicate",
        })
    }

    async fn wait_for_gap(&self, envelope: &Envelope, mut last_seq: i64) {
        let deadline = tokio::time::Instant::now() + self.config.gap_wait;
        while last_seq + 1 < envelope.seq && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            last_seq = match self.store.sync_state(envelope.tenant_id).await {
                Ok(Some(s)) => s.last_seq,
                _ => last_seq,
            };
        }
        if last_seq + 1 < envelope.seq {
            tracing::warn!(tenant_id = %envelope.tenant_id, last_seq, seq = envelope.seq, "consumer: seq gap; re-sync");
            metrics::counter!("tsync_consumer_gaps_total", "app" => self.config.app.clone())
                .increment(1);
            if let Some(hook) = &self.config.on_gap {
                hook(envelope.tenant_id);
            }
        }
    }
}

/// One XREADGROUP of new entries (`>`) on one stream: the entries, oldest first. A read that
/// times out (nil reply) is an empty batch, not an error.
pub async fn read_group(
    redis: &Client,
    group: &str,
    consumer: &str,
    stream: &str,
    count: u64,
    block: Option<Duration>,
) -> Result<Vec<(String, HashMap<String, String>)>, Error> {
    let reply: fred::types::Value = redis
        .xreadgroup(
            group,
            consumer,
            Some(count),
            block.map(|b| b.as_millis() as u64),
            false,
            stream,
            ">",
        )
        .await?;
    if reply.is_null() {
        return Ok(Vec::new());
    }
    let mut map: XReadResponse<String, String, String, String> = reply.into_xread_response()?;
    Ok(map.remove(stream).unwrap_or_default())
}

/// `base * 2^(attempt-1)`, with jitter in [50 %, 100 %].
fn backoff(base: Duration, attempt: u32) -> Duration {
    let full = base.saturating_mul(1 << attempt.saturating_sub(1).min(10));
    let ms = full.as_millis().max(1) as u64;
    Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms))
}
