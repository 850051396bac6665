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
    let event = user_event(tenant, Uuid::now_v7(), 1, 1, "a@x.test");
    let outcomes = futures_util::future::join_all((0..8).map(|_| store.apply(&event))).await;
    let applied = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Applied::Applied)))
        .count();
    let duplicates = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Applied::Duplicate)))
        .count();
    assert_eq!((applied, duplicates), (1, 7), "{outcomes:?}");
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
}

impl Scripted {
    fn calls(&self, id: Uuid) -> usize {
        self.calls.lock().unwrap().get(&id).copied().unwrap_or(0)
    }
}

impl Handler for Scripted {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        let id = envelope.event_id;
        *self.calls.lock().unwrap().entry(id).or_default() += 1;
        if self.poison.lock().unwrap().contains(&id) && !self.fixed.load(Ordering::SeqCst) {
            return Err(HandlerError::Transient("downstream refused: poison".into()));
        }
        let mut transient = self.transient.lock().unwrap();
        if let Some(left) = transient.get_mut(&id).filter(|n| **n > 0) {
            *left -= 1;
            return Err(HandlerError::Transient(format!(
                "flaky, {left} failures left"
            )));
        }
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
        let cancel = CancellationToken::new();
        let consumer = Consumer::new(
            self.redis.clone(),
            self.store.clone(),
            self.handler.clone(),
            config,
        );
        (cancel.clone(), tokio::spawn(consumer.run(cancel)))
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
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_consume"))
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
    // Kill it once it has applied some of its batch of 100.
    eventually(Duration::from_secs(30), || async {
        processed().await >= 10
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
