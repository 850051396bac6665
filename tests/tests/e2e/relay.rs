//! The outbox relay against real Postgres and Redis: outages, two relays at once, safe trimming.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use fred::prelude::*;
use sync_sdk::contract::StreamKeys;
use tokio_util::sync::CancellationToken;
use tsync_e2e::*;
use uuid::Uuid;
use wrapper::{
    outbox::testing::{commit_change, insert_tenant},
    relay::{Relay, RelayConfig},
};

struct Fixture {
    db: TestDatabase,
    keys: StreamKeys,
    tenants: Vec<Uuid>,
}

async fn fixture(tenants: usize) -> anyhow::Result<Fixture> {
    let db = fresh_database().await?;
    wrapper::MIGRATOR.run(&db.pool).await?;
    let keys = StreamKeys::new(redis_namespace(), 8).unwrap();
    let mut ids = Vec::new();
    for _ in 0..tenants {
        ids.push(insert_tenant(&db.pool, &keys).await?);
    }
    Ok(Fixture {
        db,
        keys,
        tenants: ids,
    })
}

fn config(db: &TestDatabase) -> RelayConfig {
    RelayConfig {
        batch_size: 100,
        poll_interval: Duration::from_millis(200),
        lease_retry: Duration::from_millis(200),
        maintenance_interval: Duration::from_secs(3600),
        retention: Duration::from_secs(3600),
        ..RelayConfig::new(db.url.clone())
    }
}

async fn commit_round_robin(f: &Fixture, total: usize) -> anyhow::Result<()> {
    for i in 0..total {
        commit_change(&f.db.pool, f.tenants[i % f.tenants.len()], i as i64).await?;
    }
    Ok(())
}

/// Two relays over the fixture's database and Redis, batches of 20: A, the leader to fence, and
/// B, the one taking over; with the Redis client they share.
async fn two_relays(f: &Fixture) -> anyhow::Result<(Client, Arc<Relay>, Arc<Relay>)> {
    let redis = redis_client(&redis_url()).await?;
    let mut cfg = config(&f.db);
    cfg.batch_size = 20;
    let relay = |cfg| Relay::new(f.db.pool.clone(), redis.clone(), f.keys.clone(), cfg);
    let (a, b) = (relay(cfg.clone()), relay(cfg));
    Ok((redis, a, b))
}

/// `relay`'s lease of `partition` once the lock is free (a cut backend releases it when it
/// has exited: polled).
async fn lease_once_released(
    relay: &Relay,
    partition: u32,
) -> anyhow::Result<wrapper::relay::Lease> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(lease) = relay.acquire_lease(partition).await? {
            return Ok(lease);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the lock was never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn unpublished(f: &Fixture) -> i64 {
    sqlx::query_scalar("select count(*) from outbox_pending")
        .fetch_one(&f.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn redis_down_during_1000_changes_then_back_all_arrive_in_order() -> anyhow::Result<()> {
    let mut server = RedisServer::start().await?;
    let f = fixture(10).await?;
    let redis = wrapper::startup::connect_redis(&server.url()).await?;
    let cancel = CancellationToken::new();
    let relay = Relay::new(
        f.db.pool.clone(),
        redis.clone(),
        f.keys.clone(),
        config(&f.db),
    );
    let running = tokio::spawn(relay.run(cancel.clone()));

    server.stop().await?;
    commit_round_robin(&f, 1000).await?;
    assert_eq!(
        unpublished(&f).await,
        1000,
        "nothing can be published while Redis is down"
    );

    server.restart().await?;
    eventually(Duration::from_secs(60), || async {
        unpublished(&f).await == 0
    })
    .await?;
    let events = read_all_events(&redis, &f.keys).await?;
    assert_eq!(check_per_tenant_order(&events), 1000, "every event arrived");
    cancel.cancel();
    running.await?;
    Ok(())
}

#[tokio::test]
async fn an_event_committed_on_an_idle_system_is_published_promptly() -> anyhow::Result<()> {
    let f = fixture(1).await?;
    let redis = redis_client(&redis_url()).await?;
    let mut cfg = config(&f.db);
    cfg.poll_interval = Duration::from_secs(3600); // only NOTIFY can wake it
    let cancel = CancellationToken::new();
    let relay = Relay::new(f.db.pool.clone(), redis.clone(), f.keys.clone(), cfg);
    let running = tokio::spawn(relay.run(cancel.clone()));
    // Let it become leader and go idle first.
    eventually(Duration::from_secs(10), || async {
        commit_change(&f.db.pool, f.tenants[0], 0).await.is_ok()
    })
    .await?;
    eventually(Duration::from_secs(10), || async {
        unpublished(&f).await == 0
    })
    .await?;
    let envelope = commit_change(&f.db.pool, f.tenants[0], 1).await?;
    eventually(Duration::from_secs(5), || async {
        read_all_events(&redis, &f.keys)
            .await
            .map(|e| e.iter().any(|(_, x)| x.event_id == envelope.event_id))
            .unwrap_or(false)
    })
    .await?;
    cancel.cancel();
    running.await?;
    Ok(())
}

#[tokio::test]
async fn two_relays_at_once_keep_order_and_publish_once() -> anyhow::Result<()> {
    let f = Arc::new(fixture(16).await?);
    let redis = redis_client(&redis_url()).await?;
    let cancel = CancellationToken::new();
    let mut relays = Vec::new();
    for _ in 0..2 {
        let relay = Relay::new(
            f.db.pool.clone(),
            redis.clone(),
            f.keys.clone(),
            config(&f.db),
        );
        relays.push(tokio::spawn(relay.run(cancel.clone())));
    }
    // Writers run while both relays are up.
    let mut writers = Vec::new();
    for w in 0..4 {
        let f = f.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..150 {
                commit_change(
                    &f.db.pool,
                    f.tenants[(w * 4 + i) % f.tenants.len()],
                    i as i64,
                )
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    eventually(Duration::from_secs(30), || async {
        unpublished(&f).await == 0
    })
    .await?;
    let events = read_all_events(&redis, &f.keys).await?;
    assert_eq!(check_per_tenant_order(&events), 600);
    assert_eq!(
        events.len(),
        600,
        "in steady state nothing is published twice"
    );
    cancel.cancel();
    for r in relays {
        r.await?;
    }
    Ok(())
}

#[tokio::test]
async fn relays_share_the_partitions_and_the_survivor_takes_them_all_back() -> anyhow::Result<()> {
    let f = Arc::new(fixture(16).await?);
    let redis = redis_client(&redis_url()).await?;
    let relay = || {
        Relay::new(
            f.db.pool.clone(),
            redis.clone(),
            f.keys.clone(),
            config(&f.db),
        )
    };
    let led = |r: &Arc<Relay>| r.partitions_led();
    let (a, stop_a) = (relay(), CancellationToken::new());
    let running_a = tokio::spawn(a.clone().run(stop_a.clone()));
    eventually(Duration::from_secs(20), || async { led(&a) == 8 }).await?;
    // A steady writer the whole time.
    let stop_writing = CancellationToken::new();
    let writer = {
        let (f, stop) = (f.clone(), stop_writing.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.is_cancelled() {
                commit_change(&f.db.pool, f.tenants[n % f.tenants.len()], n as i64).await?;
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(n)
        })
    };
    let (b, stop_b) = (relay(), CancellationToken::new());
    let running_b = tokio::spawn(b.clone().run(stop_b.clone()));
    eventually(Duration::from_secs(20), || async {
        led(&a) == 4 && led(&b) == 4
    })
    .await
    .with_context(|| format!("A leads {}, B leads {}", led(&a), led(&b)))?;
    stop_b.cancel();
    running_b.await?;
    eventually(Duration::from_secs(20), || async { led(&a) == 8 })
        .await
        .with_context(|| format!("A leads {} after B stopped", led(&a)))?;
    stop_writing.cancel();
    let written = writer.await??;
    eventually(Duration::from_secs(30), || async {
        unpublished(&f).await == 0
    })
    .await?;
    let events = read_all_events(&redis, &f.keys).await?;
    assert_eq!(check_per_tenant_order(&events), written);
    assert_eq!(events.len(), written, "handovers publish nothing twice");
    stop_a.cancel();
    running_a.await?;
    Ok(())
}

#[tokio::test]
async fn trimming_keeps_every_entry_a_lagging_group_has_not_acknowledged() -> anyhow::Result<()> {
    let f = fixture(1).await?;
    let redis = redis_client(&redis_url()).await?;
    let mut cfg = config(&f.db);
    cfg.retention = Duration::ZERO;
    let relay = Relay::new(f.db.pool.clone(), redis.clone(), f.keys.clone(), cfg);
    let partition = f.keys.partition_of(f.tenants[0]);
    let stream = f.keys.events(partition);
    let _: () = redis.xgroup_create(&stream, "fast", "0", true).await?;
    let _: () = redis.xgroup_create(&stream, "slow", "0", true).await?;
    commit_round_robin(&f, 100).await?;
    let lease = relay
        .acquire_lease(partition)
        .await?
        .expect("nobody else leads");
    relay.take_over(&lease).await?;
    while relay.publish_batch(&lease).await? > 0 {}
    let all: Vec<(String, std::collections::HashMap<String, String>)> =
        redis.xrange(&stream, "-", "+", None).await?;
    assert_eq!(all.len(), 100);
    let ids: Vec<String> = all.into_iter().map(|(id, _)| id).collect();

    // "fast" reads and acknowledges everything; "slow" reads 60, acknowledges only the first 40.
    let _: fred::types::Value = redis
        .xreadgroup("fast", "c1", Some(100), None, false, &stream, ">")
        .await?;
    let _: u64 = redis.xack(&stream, "fast", ids.clone()).await?;
    let _: fred::types::Value = redis
        .xreadgroup("slow", "c1", Some(60), None, false, &stream, ">")
        .await?;
    let _: u64 = redis.xack(&stream, "slow", ids[..40].to_vec()).await?;

    let removed = relay.maintain(partition).await?;
    assert_eq!(removed, 40, "only what every group acknowledged is removed");
    let left: Vec<(String, std::collections::HashMap<String, String>)> =
        redis.xrange(&stream, "-", "+", None).await?;
    let left: Vec<String> = left.into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        left,
        ids[40..].to_vec(),
        "entries 41..100 (pending or unread for slow) remain"
    );

    // "slow" catches up: now everything may go but the last delivered entry.
    let _: fred::types::Value = redis
        .xreadgroup("slow", "c1", Some(100), None, false, &stream, ">")
        .await?;
    let _: u64 = redis.xack(&stream, "slow", ids[40..].to_vec()).await?;
    assert_eq!(relay.maintain(partition).await?, 59);

    // Retention (zero here) removes published outbox rows and never an unpublished one.
    commit_change(&f.db.pool, f.tenants[0], 1000).await?;
    relay.maintain(partition).await?;
    let rows: i64 = sqlx::query_scalar("select count(*) from outbox")
        .fetch_one(&f.db.pool)
        .await?;
    assert_eq!(rows, 1, "only the unpublished row is left");
    assert_eq!(unpublished(&f).await, 1);
    Ok(())
}

/// Split brain: leader A appends a batch and loses its lock connection before it marks it; B
/// takes the partition over while A, unaware, carries on. A's marking is refused; B's take-over
/// finds A's unmarked batch at the stream's tail and marks it instead of sending it again; after
/// that Redis refuses A's appends. Every event is in the stream exactly once.
#[tokio::test]
async fn a_leader_that_lost_its_lock_is_fenced_and_nothing_is_published_twice() -> anyhow::Result<()>
{
    use wrapper::relay::Fenced;
    let f = fixture(1).await?;
    let (redis, a, b) = two_relays(&f).await?;
    let partition = f.keys.partition_of(f.tenants[0]);
    commit_round_robin(&f, 80).await?;

    let mut lease_a = a.acquire_lease(partition).await?.expect("A leads");
    a.take_over(&lease_a).await?;
    assert_eq!(a.publish_batch(&lease_a).await?, 20);
    let in_flight = a.publish_unmarked(&lease_a).await?;
    assert_eq!(in_flight.len(), 20, "appended, not marked");
    let pid = lease_a.backend_pid().await?;
    sqlx::query("select pg_terminate_backend($1)")
        .bind(pid)
        .execute(&f.db.pool)
        .await?;
    let lease_b = lease_once_released(&b, partition).await?;
    assert!(lease_b.epoch() > lease_a.epoch());

    // A carries on: marking its batch is refused under B's epoch.
    let refused = a
        .mark(&lease_a, &in_flight)
        .await
        .expect_err("A's marking is fenced");
    assert!(refused.is::<Fenced>(), "{refused:#}");
    assert_eq!(
        b.take_over(&lease_b).await?,
        20,
        "A's unmarked batch is found at the tail, not sent again"
    );
    // Now Redis refuses A outright.
    let refused = a
        .publish_batch(&lease_a)
        .await
        .expect_err("A is fenced in Redis");
    assert!(refused.is::<Fenced>(), "{refused:#}");
    while b.publish_batch(&lease_b).await? > 0 {}

    let events = read_all_events(&redis, &f.keys).await?;
    assert_eq!(check_per_tenant_order(&events), 80);
    assert_eq!(events.len(), 80, "nothing was published twice");
    assert_eq!(unpublished(&f).await, 0);
    Ok(())
}

/// The fence's race: leader A has read the epoch and queued its batch when B takes the
/// partition over (raising the epoch in Redis) and publishes. A's `EXEC` then appends nothing
/// and A learns it is fenced: the stream holds every event once, B's, in order.
#[tokio::test]
async fn a_take_over_between_a_leaders_epoch_check_and_its_append_voids_the_append()
-> anyhow::Result<()> {
    use wrapper::relay::Fenced;
    let f = fixture(1).await?;
    let (redis, a, b) = two_relays(&f).await?;
    let partition = f.keys.partition_of(f.tenants[0]);
    commit_round_robin(&f, 40).await?;

    let mut lease_a = a.acquire_lease(partition).await?.expect("A leads");
    a.take_over(&lease_a).await?;
    let pid = lease_a.backend_pid().await?;
    let (reached, release) = a.hold_next_exec();
    let publishing = {
        let a = a.clone();
        tokio::spawn(async move {
            let result = a.publish_unmarked(&lease_a).await;
            (result, lease_a)
        })
    };
    reached.await.context("A reached its EXEC")?;
    sqlx::query("select pg_terminate_backend($1)")
        .bind(pid)
        .execute(&f.db.pool)
        .await?;
    let lease_b = lease_once_released(&b, partition).await?;
    assert_eq!(b.take_over(&lease_b).await?, 0, "nothing was published yet");
    assert_eq!(b.publish_batch(&lease_b).await?, 20);

    let _ = release.send(());
    let (result, _lease_a) = publishing.await?;
    let refused = result.expect_err("A's append is voided by the new epoch");
    assert!(refused.is::<Fenced>(), "{refused:#}");
    assert_eq!(
        read_all_events(&redis, &f.keys).await?.len(),
        20,
        "only B's batch"
    );

    while b.publish_batch(&lease_b).await? > 0 {}
    let events = read_all_events(&redis, &f.keys).await?;
    assert_eq!(check_per_tenant_order(&events), 40);
    assert_eq!(events.len(), 40, "nothing was published twice");
    assert_eq!(unpublished(&f).await, 0);
    Ok(())
}

/// Redis replication is asynchronous: entries a master acknowledged and had not replicated die
/// with it. Under a steady write load, the link from the master of a partition's stream to its
/// replica is cut (so what follows is not replicated), a few more entries are appended, and the
/// master is SIGKILLed; its replica is promoted. The relay waits for one replica before marking
/// rows (`WAIT`), so the rows of the lost entries were never marked and are published again:
/// every committed change ends in the streams, in order per tenant, each applied once by a
/// consumer (Postgres store). Prints the figures: changes, lost, duplicate entries, stall.
#[tokio::test]
async fn a_master_killed_under_load_loses_no_committed_change() -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use sync_sdk::{
        consumer::{Consumer, ConsumerConfig, NoHandler},
        store::{TenantStore, postgres::PostgresStore},
    };
    let mut cluster = RedisCluster::start().await?;
    let f = Arc::new(fixture(16).await?);
    let redis = wrapper::startup::connect_redis(&cluster.url()).await?;
    let mut cfg = config(&f.db);
    cfg.wait_replicas = 1;
    cfg.wait_timeout = Duration::from_millis(300);
    cfg.poll_interval = Duration::from_millis(20);
    let cancel = CancellationToken::new();

    // A consumer applying everything into a Postgres store, throughout. Its group exists before
    // the relay starts: the relay trims what no group will read.
    let store_db = fresh_database().await?;
    let store = Arc::new(PostgresStore::new(store_db.pool.clone()));
    store.init().await?;
    for t in &f.tenants {
        store.mark_loaded(*t, 0).await?;
    }
    let mut consumer_config = ConsumerConfig::new("crm", f.keys.clone());
    consumer_config.block = Duration::from_millis(100);
    let consumer = Consumer::new(
        redis.clone(),
        store.clone(),
        Arc::new(NoHandler),
        consumer_config,
    );
    consumer.ensure_groups().await?;
    let consuming = tokio::spawn(consumer.run(cancel.clone()));
    let relay = Relay::new(f.db.pool.clone(), redis.clone(), f.keys.clone(), cfg);
    let relaying = tokio::spawn(relay.run(cancel.clone()));

    let committed = Arc::new(AtomicUsize::new(0));
    let stop_writing = Arc::new(AtomicBool::new(false));
    let writer = {
        let (f, committed, stop) = (f.clone(), committed.clone(), stop_writing.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                commit_change(&f.db.pool, f.tenants[i % f.tenants.len()], i as i64).await?;
                i += 1;
                committed.store(i, Ordering::SeqCst);
            }
            anyhow::Ok(i)
        })
    };
    eventually(Duration::from_secs(30), || async {
        committed.load(Ordering::SeqCst) >= 300 && unpublished(&f).await < 100
    })
    .await?;

    // A partition that has tenants (some of the eight may have none).
    let partition = f.keys.partition_of(f.tenants[0]);
    let stream = f.keys.events(partition);
    let victim = cluster.master_of(&stream).await?;
    const PASSWORD: [&str; 3] = ["-a", "cut-the-replica", "--no-auth-warning"];
    let length = |port| {
        let stream = stream.clone();
        async move {
            let args = [PASSWORD.as_slice(), &["xlen", &stream]].concat();
            redis_cli(port, &args)
                .await
                .ok()
                .and_then(|out| out.trim().parse::<u64>().ok())
                .unwrap_or(0)
        }
    };
    // Cut replication, let the master take a few more entries, then kill it.
    let before = length(victim).await;
    let cut_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("select now()")
        .fetch_one(&f.db.pool)
        .await?;
    // A password the replica does not know keeps it from reconnecting (connections already
    // open, like the relay's, stay authenticated).
    redis_cli(victim, &["config", "set", "requirepass", PASSWORD[1]]).await?;
    redis_cli(
        victim,
        &[PASSWORD.as_slice(), &["client", "kill", "type", "replica"]].concat(),
    )
    .await?;
    // With WAIT the relay appends at most one more batch there and then holds on (it cannot be
    // replicated), or it holds rows committed before the cut (its last batch could not be
    // confirmed); without WAIT it would go on appending and marking.
    let held = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from outbox_pending p join outbox o on o.id = p.id
             where p.partition = $1 and o.created_at < $2",
        )
        .bind(partition as i32)
        .bind(cut_at)
        .fetch_one(&f.db.pool)
        .await
        .unwrap_or(0)
    };
    eventually(Duration::from_secs(30), || async {
        length(victim).await > before || held().await > 0
    })
    .await
    .context("the relay neither appended nor held anything after replication was cut")?;
    let unreplicated = length(victim).await - before;
    let killed = std::time::SystemTime::now();
    cluster.kill(victim).await?;
    let killed_ms = killed.duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    // The promoted replica has no replica of its own, so WAIT 1 holds its partitions until the
    // dead node is back (as its replica): durability first, as configured.
    eventually(Duration::from_secs(30), || async {
        cluster.master_of(&stream).await.is_ok_and(|m| m != victim)
    })
    .await?;
    let promoted = std::time::SystemTime::now().duration_since(killed)?;
    cluster
        .restart(victim)
        .await
        .context("the killed master did not come back")?;

    // Keep writing through the failover, then stop and let everything drain.
    let target = committed.load(Ordering::SeqCst) + 300;
    eventually(Duration::from_secs(60), || async {
        committed.load(Ordering::SeqCst) >= target
    })
    .await?;
    stop_writing.store(true, Ordering::SeqCst);
    let total = writer.await??;
    eventually(Duration::from_secs(60), || async {
        unpublished(&f).await == 0
    })
    .await?;

    // End to end: every committed event id reaches the consumer's store (the streams are trimmed
    // below what the group acknowledged, so they no longer hold everything).
    let committed_ids: Vec<Uuid> = sqlx::query_scalar("select event_id from outbox")
        .fetch_all(&f.db.pool)
        .await?;
    assert_eq!(committed_ids.len(), total);
    let applied = || async {
        let mut missing = 0;
        for id in &committed_ids {
            if !store.is_processed(*id).await.unwrap_or(false) {
                missing += 1;
            }
        }
        missing
    };
    let _ = eventually(Duration::from_secs(30), || async { applied().await == 0 }).await;
    let lost = applied().await;
    let recorded: i64 = sqlx::query_scalar("select count(*) from tsync_processed")
        .fetch_one(&store_db.pool)
        .await?;
    let events = read_all_events(&redis, &f.keys).await?;
    let retained: std::collections::HashSet<Uuid> =
        events.iter().map(|(_, e)| e.event_id).collect();
    // The first entry the promoted replica took on the partition after the kill: the stall.
    let resumed_ms = events
        .iter()
        .filter(|(_, e)| f.keys.partition_of(e.tenant_id) == partition)
        .filter_map(|(id, _)| id.split('-').next()?.parse::<u64>().ok())
        .filter(|ms| *ms > killed_ms)
        .min();
    println!(
        "failover: {total} changes committed, {lost} lost, {recorded} applied, {} duplicate \
         entries among the {} the streams retain, {unreplicated} entries appended after \
         replication was cut, replica promoted after {} ms, the partition stalled {} ms after the \
         kill (until the old master was back as a replica)",
        events.len() - retained.len(),
        events.len(),
        promoted.as_millis(),
        resumed_ms.map_or("?".to_owned(), |r| (r - killed_ms).to_string())
    );
    assert_eq!(lost, 0, "every committed change reaches the app");
    assert_eq!(recorded as usize, total, "each applied once, nothing else");
    cancel.cancel();
    relaying.await?;
    consuming.await??;
    Ok(())
}
