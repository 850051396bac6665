//! The SDK consumer and stores against real Redis, Postgres and the MongoDB-wire server.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use fred::prelude::*;
use sync_sdk::{
    consumer::{Consumer, ConsumerConfig, Handler, HandlerError},
    contract::{Envelope, StreamKeys},
    dlq,
    store::{Applied, EntityKind, TenantStore, mongo::MongoStore, postgres::PostgresStore},
};
use tokio_util::sync::CancellationToken;
use tsync_e2e::*;
use uuid::Uuid;

async fn pg_store() -> anyhow::Result<Arc<PostgresStore>> {
    let db = fresh_database().await?;
    let store = PostgresStore::new(db.pool.clone());
    store.init().await?;
    Ok(Arc::new(store))
}

async fn mongo_store() -> anyhow::Result<Arc<MongoStore>> {
    let store = MongoStore::new(fresh_mongo().await?);
    store.init().await?;
    Ok(Arc::new(store))
}

#[tokio::test]
async fn postgres_store_passes_the_conformance_suite() -> anyhow::Result<()> {
    store_conformance(pg_store().await?.as_ref()).await
}

#[tokio::test]
async fn mongo_store_passes_the_conformance_suite() -> anyhow::Result<()> {
    store_conformance(mongo_store().await?.as_ref()).await
}

async fn concurrent_applies_have_one_effect<S: TenantStore>(store: Arc<S>) -> anyhow::Result<()> {
    let tenant = Uuid::now_v7();
    store.mark_loaded(tenant, 0).await?;
    let user = Uuid::now_v7();
    let event = user_event(tenant, user, 1, 1, "a@x.test");
    let outcomes = futures_util::future::join_all((0..8).map(|_| store.apply(&event))).await;
    let applied = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Applied::Applied)))
        .count();
    let duplicates = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Applied::Duplicate)))
        .count();
    // Exactly one apply wrote the state. The others find the event recorded (duplicate); on
    // MongoDB, where the state is written before the id is recorded, the apply that records
    // it may not be the one that wrote it, and then reports what it found: stale.
    let stale = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Applied::Stale)))
        .count();
    assert_eq!(applied, 1, "{outcomes:?}");
    assert!(
        duplicates >= 6 && stale <= 1 && applied + duplicates + stale == 8,
        "{outcomes:?}"
    );
    assert!(store.is_processed(event.event_id).await?);
    let stored = store.get(EntityKind::User, tenant, user).await?;
    assert_eq!(stored.map(|v| v.version), Some(1));
    Ok(())
}

#[tokio::test]
async fn concurrent_applies_of_one_event_have_one_effect_postgres() -> anyhow::Result<()> {
    concurrent_applies_have_one_effect(pg_store().await?).await
}

#[tokio::test]
async fn concurrent_applies_of_one_event_have_one_effect_mongo() -> anyhow::Result<()> {
    concurrent_applies_have_one_effect(mongo_store().await?).await
}

/// Counts calls per event id and fails as told.
#[derive(Default)]
struct Scripted {
    calls: Mutex<HashMap<Uuid, usize>>,
    /// Event ids that fail transiently this many times before succeeding.
    transient: Mutex<HashMap<Uuid, usize>>,
    /// Event ids that always fail (transiently) until `fixed` is set.
    poison: Mutex<Vec<Uuid>>,
    fixed: AtomicBool,
    /// Event ids refused for good.
    permanent: Mutex<Vec<Uuid>>,
    /// Event ids whose first call panics.
    panic_once: Mutex<Vec<Uuid>>,
    /// A tenant every event of which fails (transiently) until `fixed` is set.
    failing_tenant: Mutex<Option<Uuid>>,
    /// Event ids in the order they were handled successfully.
    succeeded: Mutex<Vec<Uuid>>,
}

impl Scripted {
    fn calls(&self, id: Uuid) -> usize {
        self.calls.lock().unwrap().get(&id).copied().unwrap_or(0)
    }
}

impl Handler for Scripted {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        let id = envelope.event_id;
        let calls = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(id).or_default();
            *n += 1;
            *n
        };
        if calls == 1 && self.panic_once.lock().unwrap().contains(&id) {
            panic!("injected handler panic for {id}");
        }
        let fixed = self.fixed.load(Ordering::SeqCst);
        if self.poison.lock().unwrap().contains(&id) && !fixed {
            return Err(HandlerError::Transient("downstream refused: poison".into()));
        }
        if *self.failing_tenant.lock().unwrap() == Some(envelope.tenant_id) && !fixed {
            return Err(HandlerError::Transient(
                "tenant's downstream is down".into(),
            ));
        }
        if self.permanent.lock().unwrap().contains(&id) {
            return Err(HandlerError::Permanent("this app cannot take it".into()));
        }
        let mut transient = self.transient.lock().unwrap();
        if let Some(left) = transient.get_mut(&id).filter(|n| **n > 0) {
            *left -= 1;
            return Err(HandlerError::Transient(format!(
                "flaky, {left} failures left"
            )));
        }
        self.succeeded.lock().unwrap().push(id);
        Ok(())
    }
}

struct Rig<S> {
    redis: Client,
    keys: StreamKeys,
    store: Arc<S>,
    handler: Arc<Scripted>,
    tenant: Uuid,
    gaps: Arc<AtomicUsize>,
}

impl<S: TenantStore> Rig<S> {
    async fn new(store: Arc<S>) -> anyhow::Result<Self> {
        let tenant = Uuid::now_v7();
        store.mark_loaded(tenant, 0).await?;
        Ok(Self {
            redis: redis_client(&redis_url()).await?,
            keys: StreamKeys::new(redis_namespace(), 4).unwrap(),
            store,
            handler: Arc::new(Scripted::default()),
            tenant,
            gaps: Arc::default(),
        })
    }

    fn config(&self) -> ConsumerConfig {
        let mut c = ConsumerConfig::new("crm", self.keys.clone());
        c.block = Duration::from_millis(200);
        c.retry_base = Duration::from_millis(20);
        c.gap_wait = Duration::from_millis(200);
        c.visibility_timeout = Duration::from_millis(500);
        c.claim_interval = Duration::from_millis(200);
        let gaps = self.gaps.clone();
        c.resync = Some(Arc::new(move |_| {
            gaps.fetch_add(1, Ordering::SeqCst);
        }));
        c
    }

    fn start(
        &self,
        config: ConsumerConfig,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<Result<(), Error>>,
    ) {
        let (_, cancel, running) = self.start_consumer(config);
        (cancel, running)
    }

    #[allow(clippy::type_complexity)]
    fn start_consumer(
        &self,
        config: ConsumerConfig,
    ) -> (
        Arc<Consumer<S, Scripted>>,
        CancellationToken,
        tokio::task::JoinHandle<Result<(), Error>>,
    ) {
        let cancel = CancellationToken::new();
        let consumer = Consumer::new(
            self.redis.clone(),
            self.store.clone(),
            self.handler.clone(),
            config,
        );
        let running = tokio::spawn(consumer.clone().run(cancel.clone()));
        (consumer, cancel, running)
    }

    /// A second tenant, loaded, on the same partition as the rig's.
    async fn neighbour(&self) -> anyhow::Result<Uuid> {
        let partition = self.keys.partition_of(self.tenant);
        let tenant = std::iter::repeat_with(Uuid::now_v7)
            .find(|t| *t != self.tenant && self.keys.partition_of(*t) == partition)
            .expect("an endless iterator finds one");
        self.store.mark_loaded(tenant, 0).await?;
        Ok(tenant)
    }

    async fn version_of(&self, tenant: Uuid, user: Uuid) -> Option<i64> {
        self.store
            .get(EntityKind::User, tenant, user)
            .await
            .ok()
            .flatten()
            .map(|v| v.version)
    }

    async fn all_processed(&self, events: &[&Envelope]) -> bool {
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        self.store
            .processed_among(&ids)
            .await
            .map(|done| done.len() == ids.len())
            .unwrap_or(false)
    }

    fn stream(&self) -> String {
        self.keys.events_for(self.tenant)
    }

    async fn publish(&self, e: &Envelope) -> anyhow::Result<String> {
        Ok(self
            .redis
            .xadd(self.stream(), false, None::<()>, "*", e.to_stream_fields())
            .await?)
    }

    async fn user_version(&self, user: Uuid) -> Option<i64> {
        self.store
            .get(EntityKind::User, self.tenant, user)
            .await
            .ok()
            .flatten()
            .map(|v| v.version)
    }

    async fn pending(&self) -> u64 {
        let summary: Vec<fred::types::Value> =
            self.redis.xpending(self.stream(), "crm", ()).await.unwrap();
        summary.first().and_then(|v| v.as_u64()).unwrap_or(0)
    }

    async fn dead_letters(&self) -> Vec<dlq::DeadLetter> {
        dlq::list(&self.redis, &self.keys, "crm", None)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, l)| l)
            .collect()
    }
}

#[tokio::test]
async fn duplicates_have_one_effect_and_versions_3_2_1_end_at_3() -> anyhow::Result<()> {
    let rig = Rig::new(pg_store().await?).await?;
    let user = Uuid::now_v7();
    let (v1, v2, v3) = (
        user_event(rig.tenant, user, 1, 1, "v1@x.test"),
        user_event(rig.tenant, user, 2, 2, "v2@x.test"),
        user_event(rig.tenant, user, 3, 3, "v3@x.test"),
    );
    let (cancel, running) = rig.start(rig.config());
    rig.publish(&v3).await?;
    rig.publish(&v2).await?;
    rig.publish(&v1).await?;
    rig.publish(&v1).await?; // delivered twice
    eventually(Duration::from_secs(20), || async {
        rig.store.is_processed(v1.event_id).await.unwrap_or(false) && rig.pending().await == 0
    })
    .await?;
    assert_eq!(rig.user_version(user).await, Some(3));
    assert_eq!(
        rig.handler.calls(v1.event_id),
        1,
        "the duplicate had no second effect"
    );
    assert!(
        rig.gaps.load(Ordering::SeqCst) >= 1,
        "seq 3 first is a gap: the re-sync hook ran"
    );
    assert!(rig.dead_letters().await.is_empty());
    cancel.cancel();
    running.await??;
    Ok(())
}

#[tokio::test]
async fn a_transient_failure_twice_then_success_is_applied_once_without_dlq() -> anyhow::Result<()>
{
    let rig = Rig::new(mongo_store().await?).await?;
    let user = Uuid::now_v7();
    let e = user_event(rig.tenant, user, 1, 1, "flaky@x.test");
    rig.handler.transient.lock().unwrap().insert(e.event_id, 2);
    let (cancel, running) = rig.start(rig.config());
    rig.publish(&e).await?;
    eventually(Duration::from_secs(20), || async {
        rig.user_version(user).await == Some(1)
    })
    .await?;
    eventually(Duration::from_secs(5), || async {
        rig.pending().await == 0
    })
    .await?;
    assert_eq!(rig.handler.calls(e.event_id), 3);
    assert!(rig.dead_letters().await.is_empty());
    cancel.cancel();
    running.await??;
    Ok(())
}

#[tokio::test]
async fn poison_and_garbage_go_to_the_dlq_the_partition_moves_on_and_redrive_applies_once()
-> anyhow::Result<()> {
    let rig = Rig::new(pg_store().await?).await?;
    let (poisoned, after) = (Uuid::now_v7(), Uuid::now_v7());
    let poison = user_event(rig.tenant, poisoned, 1, 1, "poison@x.test");
    let next = user_event(rig.tenant, after, 1, 2, "next@x.test");
    rig.handler.poison.lock().unwrap().push(poison.event_id);
    let (cancel, running) = rig.start(rig.config());
    let _: String = rig
        .redis
        .xadd(
            rig.stream(),
            false,
            None::<()>,
            "*",
            vec![("envelope", "this is not json")],
        )
        .await?;
    rig.publish(&poison).await?;
    rig.publish(&next).await?;

    eventually(Duration::from_secs(20), || async {
        rig.user_version(after).await == Some(1)
    })
    .await?;
    eventually(Duration::from_secs(5), || async {
        rig.pending().await == 0
    })
    .await?;
    let letters = rig.dead_letters().await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    let garbage = &letters[0];
    assert_eq!(garbage.attempts, 0, "garbage is dead-lettered at once");
    assert!(garbage.error.contains("undecodable"), "{}", garbage.error);
    let dead = &letters[1];
    assert_eq!(dead.attempts, 3, "after the configured attempts");
    assert!(dead.error.contains("poison"), "{}", dead.error);
    assert_eq!(dead.stream, rig.stream());
    assert_eq!(dead.event_type.as_deref(), Some("user.created"));
    assert_eq!(rig.handler.calls(poison.event_id), 3);
    assert_eq!(rig.user_version(poisoned).await, None);

    // The handler is fixed; re-drive the poison (not the garbage).
    rig.handler.fixed.store(true, Ordering::SeqCst);
    let filter = dlq::Filter {
        event_type: Some("user.created".into()),
        tenant_id: Some(rig.tenant),
    };
    assert_eq!(
        dlq::redrive(&rig.redis, &rig.keys, "crm", &filter).await?,
        1
    );
    eventually(Duration::from_secs(20), || async {
        rig.user_version(poisoned).await == Some(1)
    })
    .await?;
    assert_eq!(
        rig.handler.calls(poison.event_id),
        4,
        "applied once after the fix"
    );
    let left = rig.dead_letters().await;
    assert_eq!(left.len(), 1, "only the garbage is left");
    assert_eq!(
        dlq::purge(&rig.redis, &rig.keys, "crm", &dlq::Filter::default()).await?,
        1
    );
    assert!(rig.dead_letters().await.is_empty());
    cancel.cancel();
    running.await??;
    Ok(())
}

/// A consumer that read entries and died without acknowledging them (its pending entries stay
/// assigned to it, exactly as after SIGKILL): a live consumer claims them after the visibility
/// timeout and applies each once.
#[tokio::test]
async fn a_dead_consumers_pending_entries_are_claimed_and_applied_once() -> anyhow::Result<()> {
    let rig = Rig::new(pg_store().await?).await?;
    let stream = rig.stream();
    let users: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    let events: Vec<Envelope> = users
        .iter()
        .enumerate()
        .map(|(i, u)| user_event(rig.tenant, *u, 1, i as i64 + 1, "u@x.test"))
        .collect();
    // Create the group, then let "dead" read everything and never acknowledge.
    Consumer::new(
        rig.redis.clone(),
        rig.store.clone(),
        rig.handler.clone(),
        rig.config(),
    )
    .ensure_groups()
    .await?;
    for e in &events {
        rig.publish(e).await?;
    }
    let _: fred::types::Value = rig
        .redis
        .xreadgroup("crm", "dead", Some(100), None, false, stream.as_str(), ">")
        .await?;
    assert_eq!(rig.pending().await, 20);

    let (cancel, running) = rig.start(rig.config());
    eventually(Duration::from_secs(20), || async {
        let mut all = true;
        for u in &users {
            all &= rig.user_version(*u).await == Some(1);
        }
        all && rig.pending().await == 0
    })
    .await?;
    for e in &events {
        assert_eq!(rig.handler.calls(e.event_id), 1);
    }
    cancel.cancel();
    running.await??;
    Ok(())
}

/// A consumer process killed with SIGKILL in the middle of a batch: its pending entries are
/// claimed by a live consumer after the visibility timeout, and every event ends applied once.
#[tokio::test]
async fn a_consumer_process_killed_mid_batch_is_taken_over() -> anyhow::Result<()> {
    let db = fresh_database().await?;
    let store = Arc::new(PostgresStore::new(db.pool.clone()));
    store.init().await?;
    let rig = Rig::new(store).await?;
    let users: Vec<Uuid> = (0..100).map(|_| Uuid::now_v7()).collect();
    for (i, u) in users.iter().enumerate() {
        rig.publish(&user_event(rig.tenant, *u, 1, i as i64 + 1, "k@x.test"))
            .await?;
    }
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_replica"))
        .arg("consume")
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", redis_url())
        .env("TSYNC_NAMESPACE", rig.keys.namespace())
        .env("TSYNC_PARTITIONS", rig.keys.partitions().to_string())
        .env("TSYNC_APP", "crm")
        .env("HANDLER_DELAY_MS", "20")
        // Batches of 10 (200 ms each): killed after the first commits, inside a later batch.
        .env("TSYNC_BATCH", "10")
        .kill_on_drop(true)
        .spawn()?;
    let processed = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from tsync_processed")
            .fetch_one(&db.pool)
            .await
            .unwrap_or(0)
    };
    // Kill it once it has applied some of the 100 and holds a batch it has read but not
    // acknowledged (a batch's commit is followed at once by its XACK: killing right after the
    // first commit could land between two batches, with nothing pending to take over).
    eventually(Duration::from_secs(30), || async {
        processed().await >= 10 && rig.pending().await > 0
    })
    .await?;
    child.kill().await?;
    let applied_before = processed().await;
    assert!(
        applied_before < 100,
        "killed mid-batch ({applied_before} applied)"
    );
    assert!(
        rig.pending().await > 0,
        "the dead consumer left entries pending"
    );

    let (cancel, running) = rig.start(rig.config());
    eventually(Duration::from_secs(30), || async {
        processed().await == 100 && rig.pending().await == 0
    })
    .await?;
    for u in &users {
        assert_eq!(rig.user_version(*u).await, Some(1));
    }
    let distinct: i64 = sqlx::query_scalar("select count(distinct event_id) from tsync_processed")
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(distinct, 100, "each event recorded once");
    cancel.cancel();
    running.await??;
    Ok(())
}

#[tokio::test]
async fn shutdown_during_a_burst_leaves_nothing_pending() -> anyhow::Result<()> {
    let rig = Rig::new(pg_store().await?).await?;
    for i in 0..300 {
        rig.publish(&user_event(
            rig.tenant,
            Uuid::now_v7(),
            1,
            i + 1,
            "b@x.test",
        ))
        .await?;
    }
    let mut config = rig.config();
    config.batch = 10;
    let (cancel, running) = rig.start(config);
    eventually(Duration::from_secs(20), || async {
        rig.handler.calls.lock().unwrap().len() >= 20
    })
    .await?;
    cancel.cancel();
    running.await??;
    assert_eq!(rig.pending().await, 0, "everything read was acknowledged");
    let handled = rig.handler.calls.lock().unwrap().len();
    assert!(handled < 300, "stopped mid-burst ({handled} handled)");
    Ok(())
}

/// Entries already in the stream when the consumer starts are read and applied as one batch:
/// versions 3, 2, 1 of one user (in seq order), the same event twice, and a second user.
#[tokio::test]
async fn one_batch_with_duplicates_and_versions_out_of_order_applies_each_event_once()
-> anyhow::Result<()> {
    let rig = Rig::new(pg_store().await?).await?;
    let (ann, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let events = [
        user_event(rig.tenant, ann, 3, 1, "ann3@x.test"),
        user_event(rig.tenant, ann, 2, 2, "ann2@x.test"),
        user_event(rig.tenant, ann, 1, 3, "ann1@x.test"),
        user_event(rig.tenant, bob, 1, 4, "bob1@x.test"),
        user_event(rig.tenant, bob, 2, 5, "bob2@x.test"),
    ];
    for e in &events {
        rig.publish(e).await?;
    }
    rig.publish(&events[2]).await?; // delivered twice, in the same batch
    let (cancel, running) = rig.start(rig.config());
    let all: Vec<&Envelope> = events.iter().collect();
    eventually(Duration::from_secs(20), || async {
        rig.all_processed(&all).await && rig.pending().await == 0
    })
    .await?;
    assert_eq!(rig.user_version(ann).await, Some(3));
    assert_eq!(rig.user_version(bob).await, Some(2));
    let got = rig
        .store
        .get(EntityKind::User, rig.tenant, ann)
        .await?
        .unwrap();
    assert_eq!(got.state["email"], "ann3@x.test");
    for e in &events {
        assert_eq!(rig.handler.calls(e.event_id), 1, "handled once: {}", e.seq);
    }
    let last = rig.store.sync_state(rig.tenant).await?.unwrap().last_seq;
    assert_eq!(last, 5);
    assert_eq!(rig.gaps.load(Ordering::SeqCst), 0, "no gap in seq order");
    assert!(rig.dead_letters().await.is_empty());
    cancel.cancel();
    running.await??;
    Ok(())
}

/// In one batch: good events, one the store refuses for good (`\u0000` cannot be kept in
/// Postgres `jsonb`), more good ones, one the handler refuses for good, more good ones. Only
/// the two bad ones are dead-lettered; every good one is handled and applied once.
#[tokio::test]
async fn a_poison_entry_in_the_middle_of_a_batch_is_the_only_one_dead_lettered()
-> anyhow::Result<()> {
    let rig = Rig::new(pg_store().await?).await?;
    let mut good = Vec::new();
    let mut stream = Vec::new();
    for seq in 1..=15 {
        let e = match seq {
            6 => user_event(rig.tenant, Uuid::now_v7(), 1, seq, "nul\u{0}@x.test"),
            _ => user_event(rig.tenant, Uuid::now_v7(), 1, seq, "good@x.test"),
        };
        if seq == 12 {
            rig.handler.permanent.lock().unwrap().push(e.event_id);
        } else if seq != 6 {
            good.push(e.clone());
        }
        stream.push(e);
    }
    for e in &stream {
        rig.publish(e).await?;
    }
    let (cancel, running) = rig.start(rig.config());
    let all: Vec<&Envelope> = good.iter().collect();
    eventually(Duration::from_secs(20), || async {
        rig.all_processed(&all).await && rig.pending().await == 0
    })
    .await?;
    let mut letters = rig.dead_letters().await;
    letters.sort_by_key(|l| l.fields.get("seq").and_then(|s| s.parse::<i64>().ok()));
    let dead: Vec<Option<Uuid>> = letters
        .iter()
        .map(|l| {
            Envelope::from_stream_fields(l.fields.iter())
                .ok()
                .map(|e| e.event_id)
        })
        .collect();
    assert_eq!(
        dead,
        vec![Some(stream[5].event_id), Some(stream[11].event_id)],
        "{letters:?}"
    );
    assert!(letters[0].error.contains("store"), "{}", letters[0].error);
    assert!(
        letters[1].error.contains("cannot take it"),
        "{}",
        letters[1].error
    );
    assert_eq!(letters[1].attempts, 1, "a permanent error is not retried");
    for e in &good {
        assert_eq!(rig.user_version(user_of(e)).await, Some(1), "seq {}", e.seq);
        assert_eq!(
            rig.handler.calls(e.event_id),
            1,
            "seq {} handled once",
            e.seq
        );
    }
    assert!(!rig.store.is_processed(stream[5].event_id).await?);
    cancel.cancel();
    running.await??;
    Ok(())
}

/// A handler panics on one partition: the reader dies, readiness says so while it is down,
/// the supervisor restarts it (counted), and the restarted reader takes back what its
/// predecessor had read, so every event ends applied once.
#[tokio::test]
async fn a_panicking_handler_restarts_its_reader_and_loses_nothing() -> anyhow::Result<()> {
    let rig = Rig::new(pg_store().await?).await?;
    let partition = rig.keys.partition_of(rig.tenant);
    let (first, second) = (
        user_event(rig.tenant, Uuid::now_v7(), 1, 1, "p1@x.test"),
        user_event(rig.tenant, Uuid::now_v7(), 1, 2, "p2@x.test"),
    );
    rig.handler.panic_once.lock().unwrap().push(first.event_id);
    let mut config = rig.config();
    config.restart_backoff = Duration::from_secs(2);
    let (consumer, cancel, running) = rig.start_consumer(config);
    let health = consumer.health();
    eventually(Duration::from_secs(10), || async { health.readiness().0 }).await?;
    rig.publish(&first).await?;
    rig.publish(&second).await?;

    let reasons = eventually_some(Duration::from_secs(10), || async {
        let (ready, reasons) = health.readiness();
        (!ready).then_some(reasons)
    })
    .await?;
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains(&format!("partition {partition} has no live reader"))
            && reasons[0].contains("injected handler panic"),
        "{reasons:?}"
    );
    assert_eq!(health.dead_partitions(), vec![partition]);
    let report = consumer.health_report().await;
    assert!(!report.ready);
    assert_eq!(report.partitions[partition as usize].restarts, 1);

    eventually(Duration::from_secs(20), || async {
        rig.all_processed(&[&first, &second]).await && rig.pending().await == 0
    })
    .await?;
    assert!(health.readiness().0, "ready again after the restart");
    assert_eq!(health.restarts(), 1);
    assert_eq!(
        rig.handler.calls(first.event_id),
        2,
        "the panic, then success"
    );
    assert_eq!(rig.handler.calls(second.event_id), 1);
    assert_eq!(rig.user_version(user_of(&second)).await, Some(1));
    assert!(rig.dead_letters().await.is_empty());
    cancel.cancel();
    running.await??;
    Ok(())
}

/// Two tenants on one partition: every event of the first keeps failing (transiently), yet the
/// second's events, published after, are applied while the first waits; once the first's
/// downstream is back its events are applied in order, and nothing was dead-lettered.
#[tokio::test]
async fn a_failing_tenant_does_not_delay_another_on_the_same_partition() -> anyhow::Result<()> {
    let rig = Rig::new(pg_store().await?).await?;
    let other = rig.neighbour().await?;
    *rig.handler.failing_tenant.lock().unwrap() = Some(rig.tenant);
    let stuck: Vec<Envelope> = (1..=3)
        .map(|seq| user_event(rig.tenant, Uuid::now_v7(), 1, seq, "stuck@x.test"))
        .collect();
    let flowing: Vec<Envelope> = (1..=3)
        .map(|seq| user_event(other, Uuid::now_v7(), 1, seq, "flow@x.test"))
        .collect();
    let mut config = rig.config();
    config.max_attempts = 1_000;
    let (consumer, cancel, running) = rig.start_consumer(config);
    for e in stuck.iter().chain(&flowing) {
        rig.publish(e).await?;
    }
    eventually(Duration::from_secs(10), || async {
        let mut all = true;
        for e in &flowing {
            all &= rig.version_of(other, user_of(e)).await == Some(1);
        }
        all
    })
    .await?;
    for e in &stuck {
        assert_eq!(rig.user_version(user_of(e)).await, None, "still waiting");
    }
    let report = consumer.health_report().await;
    let parked = &report.partitions[rig.keys.partition_of(rig.tenant) as usize].parked;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(
        (parked[0].tenant_id, parked[0].reason.as_str()),
        (rig.tenant, "handler")
    );
    // It is retried (after its backoff, which may end after the other tenant's events landed).
    eventually(Duration::from_secs(10), || async {
        rig.handler.calls(stuck[0].event_id) >= 2
    })
    .await?;

    rig.handler.fixed.store(true, Ordering::SeqCst);
    let all: Vec<&Envelope> = stuck.iter().collect();
    eventually(Duration::from_secs(20), || async {
        rig.all_processed(&all).await && rig.pending().await == 0
    })
    .await?;
    let order: Vec<Uuid> = rig
        .handler
        .succeeded
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|id| stuck.iter().any(|e| e.event_id == *id))
        .collect();
    let expected: Vec<Uuid> = stuck.iter().map(|e| e.event_id).collect();
    assert_eq!(order, expected, "the waiting tenant's events ran in order");
    assert!(rig.dead_letters().await.is_empty());
    cancel.cancel();
    running.await??;
    Ok(())
}

/// The store fails for a while (the table of states is renamed away: lookups work, applies fail): the tenant waits and is retried
/// without limit; with one handler attempt allowed, counting a store failure against the event
/// would dead-letter it at once. Once the table is back everything is applied, nothing
/// dead-lettered.
#[tokio::test]
async fn store_failures_park_the_tenant_and_never_dead_letter() -> anyhow::Result<()> {
    let db = fresh_database().await?;
    let store = Arc::new(PostgresStore::new(db.pool.clone()));
    store.init().await?;
    let rig = Rig::new(store).await?;
    let mut config = rig.config();
    config.max_attempts = 1;
    config.retry_cap = Duration::from_millis(200);
    let (consumer, cancel, running) = rig.start_consumer(config);
    sqlx::query("alter table tsync_entities rename to tsync_entities_away")
        .execute(&db.pool)
        .await?;
    let events: Vec<Envelope> = (1..=5)
        .map(|seq| user_event(rig.tenant, Uuid::now_v7(), 1, seq, "s@x.test"))
        .collect();
    for e in &events {
        rig.publish(e).await?;
    }
    let partition = rig.keys.partition_of(rig.tenant) as usize;
    eventually(Duration::from_secs(10), || async {
        let report = consumer.health_report().await;
        report.partitions[partition]
            .parked
            .iter()
            .any(|p| p.tenant_id == rig.tenant && p.reason == "store")
    })
    .await?;
    assert!(rig.dead_letters().await.is_empty());
    sqlx::query("alter table tsync_entities_away rename to tsync_entities")
        .execute(&db.pool)
        .await?;
    let all: Vec<&Envelope> = events.iter().collect();
    eventually(Duration::from_secs(20), || async {
        rig.all_processed(&all).await && rig.pending().await == 0
    })
    .await?;
    assert!(rig.dead_letters().await.is_empty(), "nothing dead-lettered");
    for e in &events {
        assert_eq!(rig.user_version(user_of(e)).await, Some(1));
    }
    cancel.cancel();
    running.await??;
    Ok(())
}

/// The user a `user_event` is about.
fn user_of(e: &Envelope) -> Uuid {
    e.aggregate_id.parse().expect("user events carry a uuid")
}
