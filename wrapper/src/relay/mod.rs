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
//! * **One publisher per partition, fenced.** Each partition is led by the replica holding a
//!   Postgres advisory lock on a dedicated connection; when that replica dies its connection
//!   closes, the lock is released and another replica takes the partition over. Taking over
//!   raises the partition's epoch (`relay_epochs`) and sets it in Redis beside the stream
//!   before anything else; every publication is one transaction on the lease's own Redis
//!   connection that `WATCH`es the epoch key, reads it, and appends only if no newer epoch is
//!   there and nobody changed it before `EXEC` (native XADDs: a Lua script appending them cost
//!   Redis four times as much), and rows are marked only under the current epoch. So a leader that lost its lock without
//!   noticing (a paused process, a cut connection) can no longer publish. What it published
//!   and could not mark is found at the stream's tail by the new leader and marked, not sent
//!   again.
//! * **Leadership spread over replicas.** Every relay holds a shared advisory lock while it
//!   runs, so each one counts the live relays from `pg_locks` (a killed process's locks go
//!   with its connections); a relay leads at most its fair share, ⌈partitions / relays⌉, and
//!   steps down from partitions beyond it (another relay takes them over, fenced as above).
//!   A relay that starts beside running ones gets its share within a few lease retries; when
//!   one dies the others take its partitions over.
//! * **Replicated before marked (optional).** With `wait_replicas > 0` the relay sends `WAIT`
//!   to the stream's master after each batch and marks the rows only once that many replicas
//!   have the entries; otherwise the rows stay pending and the next attempt first looks for
//!   them at the stream's tail (published and replicated by then: marked; lost in a failover:
//!   sent again).
//! * **Redis outages only delay.** Errors back off exponentially with jitter; the outbox simply
//!   grows until Redis returns.
//! * **Trimming never drops unread entries** (`trim.lua`), and published rows are deleted after
//!   a retention period.
//!
//! It wakes on `NOTIFY tsync_outbox` and polls as a fallback.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use fred::{
    prelude::*,
    types::{ClusterHash, CustomCommand, scripts::Script},
};
use rand::Rng;
use sqlx::{Connection, PgConnection, PgPool, postgres::PgListener};
use sync_contract::{StreamKeys, stream_fields};
use tokio::{sync::Notify, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::outbox::NOTIFY_CHANNEL;

/// The consumer group of the wrapper's webhook deliveries on the event streams (`webhooks`): it
/// holds the trimming floor like any group but does not make a stream trimmable on its own.
pub const WEBHOOKS_GROUP: &str = "webhooks";

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
    /// Replicas that must have a batch before its rows are marked published (0: no `WAIT`).
    pub wait_replicas: u32,
    /// How long one `WAIT` may block.
    pub wait_timeout: Duration,
}

impl RelayConfig {
    /// Defaults for the relay over `database_url`: batches of 1,000, 500 ms poll, 1 s lease
    /// retry, 30 s maintenance, one day's retention, no `WAIT`.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            batch_size: 1_000,
            poll_interval: Duration::from_millis(500),
            lease_retry: Duration::from_secs(1),
            maintenance_interval: Duration::from_secs(30),
            retention: Duration::from_secs(86_400),
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
        }
    }
}

/// The leadership of one partition: the connection holding its advisory lock and the epoch it
/// was given (its fencing token).
pub struct Lease {
    conn: PgConnection,
    partition: u32,
    epoch: i64,
    /// The Redis connection the fenced publications go through: `WATCH` belongs to a
    /// connection, so it is the lease's alone. Made on first use, dropped after any error.
    bus: tokio::sync::Mutex<Publisher>,
}

/// A lease's own Redis connection (none yet, or dropped after an error); closed with the lease.
#[derive(Default)]
struct Publisher(Option<Client>);

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            close_aside(client);
        }
    }
}

/// Close a Redis client in the background: QUIT on a broken connection may wait for its timeout.
fn close_aside(client: Client) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = tokio::time::timeout(PUBLISHER_CONNECT, client.quit()).await;
        });
    }
}

impl Lease {
    /// The partition led.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The epoch this leadership was given.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Close the lock connection (releasing the partition) and the publishing connection.
    async fn close(self) {
        let _ = self.conn.close().await;
    }

    /// The Postgres backend of the lock connection (to cut it in tests).
    pub async fn backend_pid(&mut self) -> Result<i32, sqlx::Error> {
        sqlx::query_scalar("select pg_backend_pid()")
            .fetch_one(&mut self.conn)
            .await
    }
}

/// See [`Relay::hold_next_exec`].
struct ExecHold {
    reached: tokio::sync::oneshot::Sender<()>,
    release: tokio::sync::oneshot::Receiver<()>,
}

/// A publication refused because a newer leader took the partition over.
#[derive(Debug, thiserror::Error)]
#[error("relay: partition {partition} is led by a newer epoch than {epoch}")]
pub struct Fenced {
    /// The partition.
    pub partition: u32,
    /// The stale leader's epoch.
    pub epoch: i64,
}

/// The relay of one wrapper process.
pub struct Relay {
    db: PgPool,
    redis: Client,
    keys: StreamKeys,
    config: RelayConfig,
    wake: Notify,
    trim: Script,
    /// A publication to stop before its `EXEC` (tests: [`Relay::hold_next_exec`]).
    exec_hold: std::sync::Mutex<Option<ExecHold>>,
    /// Partitions this relay leads now.
    held: AtomicU32,
    /// The most it should lead: ⌈partitions / live relays⌉.
    fair_share: AtomicU32,
}

impl Relay {
    /// A relay over `db` and `redis`.
    pub fn new(db: PgPool, redis: Client, keys: StreamKeys, config: RelayConfig) -> Arc<Self> {
        Arc::new(Self {
            db,
            redis,
            config,
            wake: Notify::new(),
            trim: Script::from_lua(include_str!("trim.lua")),
            exec_hold: std::sync::Mutex::new(None),
            held: AtomicU32::new(0),
            fair_share: AtomicU32::new(keys.partitions()),
            keys,
        })
    }

    /// Stop this relay's next publication after it read the epoch and queued its commands,
    /// before `EXEC`: the first returned channel says it got there, sending on the second lets
    /// it go on. For tests of the fence's race.
    #[doc(hidden)]
    pub fn hold_next_exec(
        &self,
    ) -> (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (reached, reached_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release) = tokio::sync::oneshot::channel();
        *self.exec_hold.lock().expect("not poisoned") = Some(ExecHold { reached, release });
        (reached_rx, release_tx)
    }

    /// How many partitions this relay leads now.
    pub fn partitions_led(&self) -> u32 {
        self.held.load(Ordering::SeqCst)
    }

    /// Run until `cancel` fires: a NOTIFY listener and one leader loop per partition.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut tasks = JoinSet::new();
        tasks.spawn(self.clone().listen(cancel.clone()));
        tasks.spawn(self.clone().membership(cancel.clone()));
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

    /// Hold the relays' shared membership lock while running, and keep the fair share up to
    /// date from the number of its holders.
    async fn membership(self: Arc<Self>, cancel: CancellationToken) {
        let class = lock_class(self.keys.namespace());
        let mut conn: Option<PgConnection> = None;
        while !cancel.is_cancelled() {
            let counted = async {
                if conn.is_none() {
                    let mut c = PgConnection::connect(&self.config.database_url).await?;
                    sqlx::query("select pg_advisory_lock_shared($1, $2)")
                        .bind(class)
                        .bind(MEMBERSHIP_LOCK)
                        .execute(&mut c)
                        .await?;
                    conn = Some(c);
                }
                let Some(c) = conn.as_mut() else {
                    unreachable!("connected above")
                };
                // pg_locks shows the two int4 keys as oids (their bit patterns, unsigned).
                sqlx::query_scalar::<_, i64>(
                    "select count(*) from pg_locks where locktype = 'advisory' and granted
                       and objsubid = 2 and mode = 'ShareLock'
                       and database = (select oid from pg_database where datname = current_database())
                       and classid = (($1::bigint + 4294967296) % 4294967296)::oid
                       and objid = (($2::bigint + 4294967296) % 4294967296)::oid",
                )
                .bind(class)
                .bind(MEMBERSHIP_LOCK)
                .fetch_one(c)
                .await
            };
            match counted.await {
                Ok(relays) => {
                    let partitions = self.keys.partitions();
                    let relays = (relays.max(1) as u32).min(partitions);
                    let share = partitions.div_ceil(relays);
                    if self.fair_share.swap(share, Ordering::SeqCst) != share {
                        tracing::info!(relays, share, "relay: fair share of partitions");
                    }
                }
                Err(e) => {
                    // Lead as before (the share stays) and count again on a new connection.
                    tracing::warn!(error = %e, "relay: counting relays failed");
                    conn = None;
                }
            }
            sleep_or_cancel(self.config.lease_retry, &cancel).await;
        }
        if let Some(c) = conn {
            let _ = c.close().await;
        }
    }

    /// Take one partition off this relay's count if it leads more than its share; true if
    /// the caller is the one to step down.
    fn claim_step_down(&self) -> bool {
        let share = self.fair_share.load(Ordering::SeqCst);
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                (held > share).then(|| held - 1)
            })
            .is_ok()
    }

    async fn partition_loop(self: Arc<Self>, partition: u32, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            if self.held.load(Ordering::SeqCst) >= self.fair_share.load(Ordering::SeqCst) {
                sleep_or_cancel(self.config.lease_retry, &cancel).await;
                continue;
            }
            match self.acquire_lease(partition).await {
                Ok(Some(lease)) => {
                    self.held.fetch_add(1, Ordering::SeqCst);
                    tracing::info!(partition, "relay: leading partition");
                    metrics::gauge!("tsync_relay_leader", "partition" => partition.to_string())
                        .set(1.0);
                    let stepped_down = self.lead(partition, lease, &cancel).await;
                    if !stepped_down {
                        self.held.fetch_sub(1, Ordering::SeqCst);
                    }
                    metrics::gauge!("tsync_relay_leader", "partition" => partition.to_string())
                        .set(0.0);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(partition, error = %e, "relay: lease attempt failed"),
            }
            sleep_or_cancel(self.config.lease_retry, &cancel).await;
        }
    }

    /// The partition's leadership: a dedicated connection holding its advisory lock, with the
    /// partition's epoch raised; None if another replica leads it.
    pub async fn acquire_lease(&self, partition: u32) -> Result<Option<Lease>, sqlx::Error> {
        let mut conn = PgConnection::connect(&self.config.database_url).await?;
        let held: bool = sqlx::query_scalar("select pg_try_advisory_lock($1, $2)")
            .bind(lock_class(self.keys.namespace()))
            .bind(partition as i32)
            .fetch_one(&mut conn)
            .await?;
        if !held {
            let _ = conn.close().await;
            return Ok(None);
        }
        let epoch: i64 = sqlx::query_scalar(
            "insert into relay_epochs (namespace, partition, epoch) values ($1, $2, 1)
             on conflict (namespace, partition) do update set epoch = relay_epochs.epoch + 1
             returning epoch",
        )
        .bind(self.keys.namespace())
        .bind(partition as i32)
        .fetch_one(&mut conn)
        .await?;
        Ok(Some(Lease {
            conn,
            partition,
            epoch,
            bus: tokio::sync::Mutex::default(),
        }))
    }

    /// Start leading: fence the partition in Redis (older leaders are refused from now on),
    /// then mark the rows a previous leader published and did not mark. Returns how many.
    pub async fn take_over(&self, lease: &Lease) -> anyhow::Result<usize> {
        self.publish_entries(lease, Vec::new()).await?;
        let mut marked = 0;
        loop {
            let n = self.reconcile(lease).await?;
            marked += n;
            if (n as i64) < self.config.batch_size {
                return Ok(marked);
            }
        }
    }

    /// Mark the partition's oldest pending rows that are already in the stream (published by
    /// a leader that could not mark them, or before a `WAIT` fell short), once replicated.
    async fn reconcile(&self, lease: &Lease) -> anyhow::Result<usize> {
        let pending: Vec<(i64, Uuid)> = sqlx::query_as(
            "select p.id, o.event_id from outbox_pending p join outbox o on o.id = p.id
             where p.partition = $1 order by p.id limit $2",
        )
        .bind(lease.partition as i32)
        .bind(self.config.batch_size)
        .fetch_all(&self.db)
        .await?;
        if pending.is_empty() {
            return Ok(0);
        }
        // Only the leader appends (and the rare re-drive), so an unmarked batch is within the
        // last few batches' worth of entries.
        let stream = self.keys.events(lease.partition);
        let tail: Vec<(String, std::collections::HashMap<String, String>)> = self
            .redis
            .xrevrange(&stream, "+", "-", Some(self.config.batch_size as u64 * 4))
            .await?;
        let published: std::collections::HashSet<Uuid> = tail
            .into_iter()
            .filter_map(|(_, fields)| {
                sync_contract::Envelope::from_stream_fields(fields)
                    .ok()
                    .map(|e| e.event_id)
            })
            .collect();
        let ids: Vec<i64> = pending
            .into_iter()
            .filter(|(_, event)| published.contains(event))
            .map(|(id, _)| id)
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        self.wait_replicated(lease.partition).await?;
        self.mark(lease, &ids).await?;
        tracing::info!(
            partition = lease.partition,
            rows = ids.len(),
            "relay: marked rows found published"
        );
        Ok(ids.len())
    }

    /// Lead until cancelled, fenced, or the lease is lost; true if it stepped down to keep to
    /// its fair share (its count already lowered).
    async fn lead(&self, partition: u32, mut lease: Lease, cancel: &CancellationToken) -> bool {
        let mut backoff = Backoff::default();
        // Fence and reconcile before the first batch, and again after any failed one.
        let mut reconciled = false;
        let mut last_check = Instant::now();
        let mut last_maintenance = Instant::now() - self.config.maintenance_interval;
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cancel.is_cancelled() {
                break;
            }
            if self.claim_step_down() {
                tracing::info!(partition, "relay: stepping down to its fair share");
                lease.close().await;
                return true;
            }
            if last_check.elapsed() >= Duration::from_secs(1) {
                if let Err(e) = sqlx::query("select 1").execute(&mut lease.conn).await {
                    tracing::warn!(partition, error = %e, "relay: lease connection lost");
                    return false;
                }
                last_check = Instant::now();
            }
            let published = async {
                if !reconciled {
                    self.take_over(&lease).await?;
                    reconciled = true;
                }
                self.publish_batch(&lease).await
            };
            match published.await {
                Ok(n) => {
                    backoff.reset();
                    if n as i64 == self.config.batch_size {
                        continue;
                    }
                }
                Err(e) if e.is::<Fenced>() => {
                    tracing::warn!(partition, epoch = lease.epoch, error = %e, "relay: fenced by a newer leader; stepping down");
                    metrics::counter!("tsync_relay_fenced_total", "partition" => partition.to_string()).increment(1);
                    return false;
                }
                Err(e) => {
                    reconciled = false;
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
        lease.close().await;
        false
    }

    /// Publish up to one batch of the partition's unpublished rows under `lease`; returns how
    /// many. Fails with [`Fenced`] when a newer leader took the partition over.
    pub async fn publish_batch(&self, lease: &Lease) -> anyhow::Result<usize> {
        let ids = self.publish_unmarked(lease).await?;
        if ids.is_empty() {
            return Ok(0);
        }
        self.wait_replicated(lease.partition).await?;
        self.mark(lease, &ids).await?;
        Ok(ids.len())
    }

    /// Append up to one batch of pending rows to the stream (one fenced script call) without
    /// marking them; returns their ids. [`publish_batch`](Self::publish_batch) is this, then
    /// `WAIT`, then marking: split so tests can lose the leadership in between.
    pub async fn publish_unmarked(&self, lease: &Lease) -> anyhow::Result<Vec<i64>> {
        let rows: Vec<(i64, Uuid, i64, String, String, Option<String>)> = sqlx::query_as(
            "select o.id, o.tenant_id, o.seq, o.event_type, o.envelope, o.traceparent
             from outbox_pending p join outbox o on o.id = p.id
             where p.partition = $1 order by p.id limit $2",
        )
        .bind(lease.partition as i32)
        .bind(self.config.batch_size)
        .fetch_all(&self.db)
        .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let mut ids = Vec::with_capacity(rows.len());
        let mut entries = Vec::with_capacity(rows.len());
        // One span per event, child of the write that made it, open until the batch is in the
        // stream; the entry carries it (field `traceparent`) so each app's apply is its child.
        let mut spans = Vec::new();
        for (id, tenant_id, seq, event_type, envelope, traceparent) in rows {
            let mut fields = stream_fields(&event_type, tenant_id, seq, envelope);
            if let Some(parent) = traceparent.filter(|_| sync_telemetry::exporting()) {
                let span = tracing::info_span!("relay.publish", event_type = %event_type, %tenant_id, seq,
                    partition = lease.partition);
                sync_telemetry::continue_trace(&span, Some(&parent));
                if let Some(own) = sync_telemetry::traceparent_of(&span) {
                    fields.push((sync_telemetry::TRACEPARENT, own));
                }
                spans.push(span);
            }
            entries.push(fields);
            ids.push(id);
        }
        let appended = self.publish_entries(lease, entries).await?;
        anyhow::ensure!(
            appended == ids.len(),
            "Redis appended {appended} of {} entries",
            ids.len()
        );
        metrics::histogram!("tsync_relay_publish_batch_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(ids)
    }

    /// Append `entries` to the partition's stream, all or none, fenced by the lease's epoch;
    /// none only fences (raises the epoch in Redis). Returns how many were appended.
    ///
    /// One transaction on the lease's own connection: `WATCH` the epoch key, `GET` it, refuse
    /// if it is newer than ours, else `MULTI`, raise it if older, the XADDs, `EXEC`. A new
    /// leader raising the epoch in between makes `EXEC` append nothing; then it is read again.
    /// The connection neither reconnects nor follows a redirection on its own (either would
    /// resend the queued commands without the `WATCH`): any error fails the call and the next
    /// one opens a new connection.
    async fn publish_entries(
        &self,
        lease: &Lease,
        entries: Vec<Vec<(&'static str, String)>>,
    ) -> anyhow::Result<usize> {
        let mut bus = lease.bus.lock().await;
        let result = self.publish_on(lease, &mut bus.0, &entries).await;
        if result.as_ref().is_err_and(|e| !e.is::<Fenced>())
            && let Some(broken) = bus.0.take()
        {
            close_aside(broken);
        }
        result
    }

    async fn publish_on(
        &self,
        lease: &Lease,
        bus: &mut Option<Client>,
        entries: &[Vec<(&'static str, String)>],
    ) -> anyhow::Result<usize> {
        let client = self.publisher(bus).await?;
        let epoch_key = self.keys.relay_epoch(lease.partition);
        let command = untyped(&self.keys.events(lease.partition));
        // A changed epoch key aborts EXEC: a new leader (fenced below) or, rarely, an older one
        // fencing itself; a few rounds settle it.
        for _ in 0..8 {
            let watched = client.pipeline();
            let _: () = watched
                .custom(command("WATCH"), vec![epoch_key.as_str()])
                .await?;
            let _: () = watched.get(&epoch_key).await?;
            let (_, current): (Value, Option<i64>) = watched.all().await?;
            let current = current.unwrap_or(0);
            if current > lease.epoch {
                let _: () = client.unwatch().await?;
                return Err(Fenced {
                    partition: lease.partition,
                    epoch: lease.epoch,
                }
                .into());
            }
            let raise = current < lease.epoch;
            if !raise && entries.is_empty() {
                let _: () = client.unwatch().await?;
                return Ok(0);
            }
            let hold = self.exec_hold.lock().expect("not poisoned").take();
            if let Some(hold) = hold {
                let _ = hold.reached.send(());
                let _ = hold.release.await;
            }
            if let Some(appended) = self.append_watched(&client, lease, entries, raise).await? {
                return Ok(appended);
            }
        }
        anyhow::bail!("the epoch key kept changing under the publication")
    }

    /// The lease's own connection, opened on first use: it neither reconnects nor follows a
    /// redirection on its own and refuses at once while disconnected.
    async fn publisher(&self, bus: &mut Option<Client>) -> anyhow::Result<Client> {
        if let Some(client) = bus {
            return Ok(client.clone());
        }
        let mut config = self.redis.client_config();
        config.fail_fast = true;
        let mut connection = self.redis.connection_config().clone();
        connection.max_redirections = 0;
        connection.max_command_attempts = 1;
        let client = Client::new(
            config,
            Some(self.redis.perf_config()),
            Some(connection),
            None,
        );
        tokio::time::timeout(PUBLISHER_CONNECT, client.init())
            .await
            .map_err(|_| anyhow::anyhow!("connecting the publisher to Redis timed out"))??;
        *bus = Some(client.clone());
        Ok(client)
    }

    /// `MULTI`, the epoch raised (`raise`), the XADDs, `EXEC`, sent as one pipeline (fred's own
    /// transactions flush the socket after every queued command, which cost more than the
    /// appends). How many were appended; None when the watched epoch key changed (nothing was).
    async fn append_watched(
        &self,
        client: &Client,
        lease: &Lease,
        entries: &[Vec<(&'static str, String)>],
        raise: bool,
    ) -> anyhow::Result<Option<usize>> {
        let stream = self.keys.events(lease.partition);
        let command = untyped(&stream);
        let pipeline = client.pipeline();
        let _: () = pipeline
            .custom(command("MULTI"), Vec::<Value>::new())
            .await?;
        if raise {
            let epoch_key = self.keys.relay_epoch(lease.partition);
            let args: Vec<Value> = vec![epoch_key.into(), lease.epoch.into()];
            let _: () = pipeline.custom(command("SET"), args).await?;
        }
        for fields in entries {
            let _: () = pipeline
                .xadd(&stream, false, None::<()>, "*", fields.clone())
                .await?;
        }
        let _: () = pipeline
            .custom(command("EXEC"), Vec::<Value>::new())
            .await?;
        let mut replies: Vec<Result<Value, Error>> = pipeline.try_all().await;
        if let Some(failed) = replies.iter().find_map(|r| r.as_ref().err()) {
            // A queued command refused (EXEC then aborts the whole transaction) or EXEC failed.
            return Err(failed.clone().into());
        }
        match replies.pop() {
            Some(Ok(Value::Null)) => Ok(None),
            Some(Ok(Value::Array(done))) => {
                let wanted = entries.len() + usize::from(raise);
                anyhow::ensure!(
                    done.len() == wanted
                        && done
                            .iter()
                            .all(|r| matches!(r, Value::String(_) | Value::Bytes(_))),
                    "EXEC answered {done:?} for {wanted} commands"
                );
                Ok(Some(entries.len()))
            }
            other => anyhow::bail!("EXEC answered {other:?}"),
        }
    }

    /// With `wait_replicas > 0`: block until that many replicas of the stream's master have
    /// everything written so far (`WAIT` on the master that owns the stream's slot), or fail.
    async fn wait_replicated(&self, partition: u32) -> anyhow::Result<()> {
        let wanted = self.config.wait_replicas;
        if wanted == 0 {
            return Ok(());
        }
        let timeout = self.config.wait_timeout.as_millis().max(1) as i64;
        let slot = sync_contract::hash_slot(&self.keys.events(partition));
        let owner = self
            .redis
            .cached_cluster_state()
            .and_then(|state| state.get_server(slot).cloned());
        let acked: i64 = match owner {
            Some(server) => {
                self.redis
                    .with_cluster_node(server)
                    .wait(i64::from(wanted), timeout)
                    .await?
            }
            None => self.redis.wait(i64::from(wanted), timeout).await?,
        };
        metrics::counter!("tsync_relay_waits_total", "outcome" => if acked >= i64::from(wanted) { "ok" } else { "short" })
            .increment(1);
        anyhow::ensure!(
            acked >= i64::from(wanted),
            "WAIT: {acked} of {wanted} replicas acknowledged within {timeout} ms; the batch stays pending"
        );
        Ok(())
    }

    /// Mark rows published, under the lease's epoch: fails with [`Fenced`] once a newer leader
    /// took the partition over.
    pub async fn mark(&self, lease: &Lease, ids: &[i64]) -> anyhow::Result<()> {
        // One statement (one round trip, its own transaction): the epoch row is locked shared
        // with other markers and exclusive with a new leader raising it, so once raised no
        // older leader marks anything.
        let deleted = sqlx::query(
            "delete from outbox_pending where id = any($1)
               and exists (select 1 from relay_epochs
                           where namespace = $2 and partition = $3 and epoch = $4 for share)",
        )
        .bind(ids)
        .bind(self.keys.namespace())
        .bind(lease.partition as i32)
        .bind(lease.epoch)
        .execute(&self.db)
        .await?
        .rows_affected();
        if deleted == 0 && !ids.is_empty() {
            // Nothing marked: fenced, or marked already (then the epoch is still ours).
            let current: Option<i64> = sqlx::query_scalar(
                "select epoch from relay_epochs where namespace = $1 and partition = $2",
            )
            .bind(self.keys.namespace())
            .bind(lease.partition as i32)
            .fetch_optional(&self.db)
            .await?;
            if current != Some(lease.epoch) {
                return Err(Fenced {
                    partition: lease.partition,
                    epoch: lease.epoch,
                }
                .into());
            }
        }
        metrics::counter!("tsync_relay_published_total", "partition" => lease.partition.to_string())
            .increment(ids.len() as u64);
        Ok(())
    }

    /// Trim the partition's event stream and credit stream safely (never below what a group has
    /// not acknowledged), delete old published rows, refresh gauges.
    pub async fn maintain(&self, partition: u32) -> anyhow::Result<u64> {
        let stream = self.keys.events(partition);
        // The webhooks group alone does not make the stream trimmable (apps' groups may come
        // later), but it holds the floor like any group.
        let (removed, _floor): (u64, Option<String>) = self
            .trim
            .evalsha_with_reload(&self.redis, stream.as_str(), vec![WEBHOOKS_GROUP])
            .await?;
        // The partition's credit stream, by the same rule: below what the ledger ingester (its
        // group) has acknowledged, every entry is in the ledger already.
        // Every app's own credit stream and the shared legacy one.
        let apps: Vec<String> = sqlx::query_scalar("select name from applications")
            .fetch_all(&self.db)
            .await?;
        let mut credit_streams = vec![self.keys.credit_stream(partition)];
        credit_streams.extend(
            apps.iter()
                .map(|app| self.keys.app_credit_stream(partition, app)),
        );
        let mut credits_removed = 0;
        for credits in credit_streams {
            let (removed, _floor): (u64, Option<String>) = self
                .trim
                .evalsha_with_reload(&self.redis, credits.as_str(), ())
                .await?;
            credits_removed += removed;
        }
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
/// A command sent untyped to the node of `key`'s slot: fred's typed WATCH, SET, MULTI and EXEC
/// would take a pipeline's placeholder (or a transaction's `QUEUED`) for a refusal.
fn untyped(key: &str) -> impl Fn(&'static str) -> CustomCommand + use<> {
    let slot = sync_contract::hash_slot(key);
    move |name| CustomCommand::new_static(name, ClusterHash::Custom(slot), false)
}

/// How long the publisher's own connection may take to open (or to close).
const PUBLISHER_CONNECT: Duration = Duration::from_secs(5);

/// The second key of the relays' shared membership lock (partition locks use 0..partitions).
const MEMBERSHIP_LOCK: i32 = i32::MAX;

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
