//! The outbox relay: the only bridge from Postgres to Redis.
//!
//! Guarantees:
//! * **Nothing lost.** It selects the rows listed in `outbox_pending` (never "ids above a mark":
//!   serial ids commit out of order), publishes them with one pipelined XADD per batch, and
//!   deletes their pending rows only after Redis acknowledged every entry of the batch. A failure anywhere
//!   means the batch is sent again: duplicates are possible and carry the same eventId.
//! * **Per-tenant order.** A tenant's rows become visible in `seq` order (the writer holds the
//!   tenant row lock until commit), and a batch is sent in id order, so each tenant's entries are
//!   appended in `seq` order.
//! * **One publisher per partition.** Each partition is led by the replica holding a Postgres
//!   advisory lock on a dedicated connection; when that replica dies its connection closes, the
//!   lock is released and another replica takes the partition over.
//! * **Redis outages only delay.** Errors back off exponentially with jitter; the outbox simply
//!   grows until Redis returns.
//! * **Trimming never drops unread entries** (`trim.lua`), and published rows are deleted after
//!   a retention period.
//!
//! It wakes on `NOTIFY tsync_outbox` and polls as a fallback.

use std::{sync::Arc, time::Duration};

use fred::{prelude::*, types::scripts::Script};
use rand::Rng;
use sqlx::{Connection, PgConnection, PgPool, postgres::PgListener};
use sync_contract::{StreamKeys, stream_fields};
use tokio::{sync::Notify, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::outbox::NOTIFY_CHANNEL;

/// How the relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// URL for the dedicated lock connections (the pool's URL).
    pub database_url: String,
    /// Rows per pipelined batch.
    pub batch_size: i64,
    /// Fallback poll interval when no NOTIFY arrives.
    pub poll_interval: Duration,
    /// How often a follower tries to take a partition over.
    pub lease_retry: Duration,
    /// How often streams are trimmed and outbox gauges refreshed.
    pub maintenance_interval: Duration,
    /// Published outbox rows older than this are deleted.
    pub retention: Duration,
}

/// The relay of one wrapper process.
pub struct Relay {
    db: PgPool,
    redis: Client,
    keys: StreamKeys,
    config: RelayConfig,
    wake: Notify,
    trim: Script,
}

impl Relay {
    /// A relay over `db` and `redis`.
    pub fn new(db: PgPool, redis: Client, keys: StreamKeys, config: RelayConfig) -> Arc<Self> {
        Arc::new(Self {
            db,
            redis,
            keys,
            config,
            wake: Notify::new(),
            trim: Script::from_lua(include_str!("trim.lua")),
        })
    }

    /// Run until `cancel` fires: a NOTIFY listener and one leader loop per partition.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut tasks = JoinSet::new();
        tasks.spawn(self.clone().listen(cancel.clone()));
        for partition in 0..self.keys.partitions() {
            tasks.spawn(self.clone().partition_loop(partition, cancel.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn listen(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = Backoff::default();
        while !cancel.is_cancelled() {
            let listener = async {
                let mut l = PgListener::connect_with(&self.db).await?;
                l.listen(NOTIFY_CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut listener = match listener.await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "relay: LISTEN failed; polling meanwhile");
                    sleep_or_cancel(backoff.next(), &cancel).await;
                    continue;
                }
            };
            backoff.reset();
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    n = listener.recv() => match n {
                        Ok(_) => self.wake.notify_waiters(),
                        Err(e) => {
                            tracing::warn!(error = %e, "relay: LISTEN connection lost");
                            break;
                        }
                    },
                }
            }
        }
    }

    async fn partition_loop(self: Arc<Self>, partition: u32, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            match self.acquire_lease(partition).await {
                Ok(Some(lease)) => {
                    tracing::info!(partition, "relay: leading partition");
                    metrics::gauge!("tsync_relay_leader", "partition" => partition.to_string())
                        .set(1.0);
                    self.lead(partition, lease, &cancel).await;
                    metrics::gauge!("tsync_relay_leader", "partition" => partition.to_string())
                        .set(0.0);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(partition, error = %e, "relay: lease attempt failed"),
            }
            sleep_or_cancel(self.config.lease_retry, &cancel).await;
        }
    }

    /// A dedicated connection holding the partition's advisory lock, or None if another
    /// replica leads it.
    async fn acquire_lease(&self, partition: u32) -> Result<Option<PgConnection>, sqlx::Error> {
        let mut conn = PgConnection::connect(&self.config.database_url).await?;
        let held: bool = sqlx::query_scalar("select pg_try_advisory_lock($1, $2)")
            .bind(lock_class(self.keys.namespace()))
            .bind(partition as i32)
            .fetch_one(&mut conn)
            .await?;
        if held {
            Ok(Some(conn))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    async fn lead(&self, partition: u32, mut lease: PgConnection, cancel: &CancellationToken) {
        let mut backoff = Backoff::default();
        let mut last_check = Instant::now();
        let mut last_maintenance = Instant::now() - self.config.maintenance_interval;
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cancel.is_cancelled() {
                break;
            }
            if last_check.elapsed() >= Duration::from_secs(1) {
                if let Err(e) = sqlx::query("select 1").execute(&mut lease).await {
                    tracing::warn!(partition, error = %e, "relay: lease connection lost");
                    return;
                }
                last_check = Instant::now();
            }
            match self.publish_batch(partition).await {
                Ok(n) => {
                    backoff.reset();
                    if n as i64 == self.config.batch_size {
                        continue;
                    }
                }
                Err(e) => {
                    metrics::counter!("tsync_relay_errors_total", "partition" => partition.to_string()).increment(1);
                    let delay = backoff.next();
                    tracing::warn!(partition, error = %e, ?delay, "relay: publish failed; retrying");
                    sleep_or_cancel(delay, cancel).await;
                    continue;
                }
            }
            if last_maintenance.elapsed() >= self.config.maintenance_interval {
                if let Err(e) = self.maintain(partition).await {
                    tracing::warn!(partition, error = %e, "relay: maintenance failed");
                }
                last_maintenance = Instant::now();
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = notified => {},
                _ = tokio::time::sleep(self.config.poll_interval) => {},
            }
        }
        let _ = lease.close().await;
    }

    /// Publish up to one batch of the partition's unpublished rows; returns how many.
    pub async fn publish_batch(&self, partition: u32) -> anyhow::Result<usize> {
        let rows: Vec<(i64, Uuid, i64, String, String)> = sqlx::query_as(
            "select o.id, o.tenant_id, o.seq, o.event_type, o.envelope
             from outbox_pending p join outbox o on o.id = p.id
             where p.partition = $1 order by p.id limit $2",
        )
        .bind(partition as i32)
        .bind(self.config.batch_size)
        .fetch_all(&self.db)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let started = std::time::Instant::now();
        let stream = self.keys.events(partition);
        let pipeline = self.redis.pipeline();
        let mut ids = Vec::with_capacity(rows.len());
        for (id, tenant_id, seq, event_type, envelope) in rows {
            let fields = stream_fields(&event_type, tenant_id, seq, envelope);
            let _: () = pipeline
                .xadd(&stream, false, None::<()>, "*", fields)
                .await?;
            ids.push(id);
        }
        let replies: Vec<Result<String, Error>> = pipeline.try_all().await;
        if let Some(Err(e)) = replies.iter().find(|r| r.is_err()) {
            anyhow::bail!("XADD refused: {e}");
        }
        anyhow::ensure!(
            replies.len() == ids.len(),
            "Redis answered {} of {} XADDs",
            replies.len(),
            ids.len()
        );
        sqlx::query("delete from outbox_pending where id = any($1)")
            .bind(&ids)
            .execute(&self.db)
            .await?;
        metrics::histogram!("tsync_relay_publish_batch_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("tsync_relay_published_total", "partition" => partition.to_string())
            .increment(ids.len() as u64);
        Ok(ids.len())
    }

    /// Trim the partition's event stream and credit stream safely (never below what a group has
    /// not acknowledged), delete old published rows, refresh gauges.
    pub async fn maintain(&self, partition: u32) -> anyhow::Result<u64> {
        let stream = self.keys.events(partition);
        let (removed, _floor): (u64, Option<String>) = self
            .trim
            .evalsha_with_reload(&self.redis, stream.as_str(), ())
            .await?;
        // The partition's credit stream, by the same rule: below what the ledger ingester (its
        // group) has acknowledged, every entry is in the ledger already.
        let credits = self.keys.credit_stream(partition);
        let (credits_removed, _floor): (u64, Option<String>) = self
            .trim
            .evalsha_with_reload(&self.redis, credits.as_str(), ())
            .await?;
        let retention = self.config.retention.as_secs_f64();
        sqlx::query(
            "delete from outbox o where o.partition = $1
               and o.created_at < now() - make_interval(secs => $2)
               and not exists (select 1 from outbox_pending p where p.id = o.id)",
        )
        .bind(partition as i32)
        .bind(retention)
        .execute(&self.db)
        .await?;
        let (depth, oldest): (i64, Option<f64>) = sqlx::query_as(
            "select count(*), extract(epoch from now() - min(o.created_at))::float8
             from outbox_pending p join outbox o on o.id = p.id where p.partition = $1",
        )
        .bind(partition as i32)
        .fetch_one(&self.db)
        .await?;
        let length: u64 = self.redis.xlen(&stream).await?;
        let p = partition.to_string();
        metrics::gauge!("tsync_relay_outbox_depth", "partition" => p.clone()).set(depth as f64);
        metrics::gauge!("tsync_relay_oldest_unpublished_age_seconds", "partition" => p.clone())
            .set(oldest.unwrap_or(0.0));
        metrics::gauge!("tsync_relay_stream_length", "partition" => p.clone()).set(length as f64);
        metrics::counter!("tsync_relay_trimmed_total", "partition" => p.clone()).increment(removed);
        metrics::counter!("tsync_credit_stream_trimmed_total", "partition" => p)
            .increment(credits_removed);
        Ok(removed)
    }
}

/// The advisory-lock class of a namespace, so two deployments sharing a database do not share
/// leadership.
fn lock_class(namespace: &str) -> i32 {
    let hash = namespace.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash as i32
}

async fn sleep_or_cancel(delay: Duration, cancel: &CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => {},
        _ = tokio::time::sleep(delay) => {},
    }
}

/// Exponential backoff with full jitter, 50 ms doubling up to 5 s.
#[derive(Debug, Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let cap = 50u64.saturating_mul(1 << self.attempt.min(7)).min(5_000);
        self.attempt += 1;
        Duration::from_millis(rand::thread_rng().gen_range(cap / 2..=cap))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}
