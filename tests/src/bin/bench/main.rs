//! Benchmarks against the real servers (not tests: they measure, they do not assert).
//!
//! `cargo run --release -p tsync-e2e --bin bench -- relay [--events N] [--batch N]`
//!
//! `cargo run --release -p tsync-e2e --bin bench -- consumer [--events N]`
//!
//! consumer: raw XREADGROUP + XACK of N entries vs. the SDK consumer applying the same entries
//! into the Postgres store and into the Mongo store (N / 4 there: the MongoDB-wire test server
//! is much slower than mongod), all on the same Redis in one run.
//!
//! `cargo run --release -p tsync-e2e --bin bench -- load --events 10000`
//!
//! load: lazy-loading a tenant of N users (paged snapshot, 5,000 users a page) from a running
//! wrapper into a fresh Postgres store, five times.
//!
//! `cargo run --release -p tsync-e2e --bin bench -- credits --events 50000`
//!
//! credits: consumes per second on the direct path (HTTP to the wrapper's ledger, N / 10 of
//! them) and on the fast path (the Lua script on the Redis mirror, N), 32 at a time.
//!
//! `cargo run --release -p tsync-e2e --bin bench -- pages --events 5000`
//!
//! pages: browser sign-in through nginx (form post: argon2 and the token, 20 times, one at a
//! time), then N dashboard renders of the CRM and of the HRMS with that session cookie (token
//! verified, tenant bound, data from the store), 16 at a time, sent to the apps directly with
//! the `X-Tenant` header nginx would add (nginx's per-tenant limit would cap the rate).
//!
//! `cargo build --release -p wrapper -p crm -p hrms -p tsync-e2e --bin wrapper --bin crm --bin
//! hrms --bin replica --bin bench && target/release/bench e2e --store mongo|postgres`
//!
//! e2e: the wrapper, the CRM and the HRMS binaries as processes (or, on Postgres, the SDK
//! consumer as two processes), 20 tenants of 5 users; single changes on an idle suite, writes
//! through the wrapper's REST API at fixed rates (`--rates 50,100,200,400`, `--seconds 20`),
//! then 64 writers (`--burst 20`); per phase the REST latency, the time until each app has the
//! change, convergence after the load, the relay's share, the apps' store lookups and writes,
//! and what each event cost the store and Redis; plots in `docs/bench/` (see `bench_e2e.rs`).
//!
//! `scripts/bench-compare REVISION [e2e flags]` (or `bench compare --base DIR [--head DIR]
//! [--runs 2]`): the same harness over a base build's binaries and the head's, alternating.
//!
//! `cargo run --release -p tsync-e2e --bin bench -- sign-in --wrapper-bin target/release/wrapper`
//!
//! export: one tenant's export (100,000 users by default) with the wrapper binary as a process:
//! the time to package and to download it, and the process's resident memory around both.
//! sign-in: 200 concurrent password sign-ins to one account, round after round, against the
//! wrapper binary as a process: throughput, latency, answers and resident memory.
//!
//! relay: raw pipelined XADD of the outbox's payloads vs. the relay publishing the same number
//! of committed outbox rows, on the same Redis in one run; then commit → stream latency at a
//! steady write rate.

mod bench_e2e;
mod bench_export;
mod bench_sign_in;
mod plots;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fred::{prelude::*, types::streams::XReadResponse};
use sync_sdk::contract::{StreamKeys, stream_fields};
use sync_testkit::*;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wrapper::{
    outbox::testing::{commit_change, insert_tenant},
    relay::{Relay, RelayConfig},
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args: Vec<String> = std::env::args().collect();
    let number = |name: &str| flag(&args, name).and_then(|n| n.parse::<usize>().ok());
    let events = number("--events").unwrap_or(20_000);
    let batch = flag(&args, "--batch")
        .and_then(|n| n.parse().ok())
        .unwrap_or(500i64);
    let wait = flag(&args, "--wait")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0u32);
    let tenant_count = number("--tenants");
    let runs = number("--runs").unwrap_or(5);
    let store = flag(&args, "--store").unwrap_or("postgres");
    match args.get(1).map(String::as_str) {
        Some("relay") => relay(events, batch, wait, tenant_count.unwrap_or(64)).await,
        Some("consumer") => consumer(events, tenant_count.unwrap_or(16)).await,
        Some("load") => load(events, runs, store).await,
        Some("load-app") => load_app(&args[2..]).await,
        Some("tenants") => tenants(tenant_count.unwrap_or(10_000), events).await,
        Some("credits") => credits(events).await,
        Some("pages") => pages(events).await,
        Some("e2e") => bench_e2e::e2e(&args).await,
        Some("compare") => bench_e2e::compare(&args).await,
        Some("sign-in") => bench_sign_in::sign_in(&args).await,
        Some("export") => bench_export::export(&args).await,
        _ => {
            eprintln!(
                "usage: bench relay [--events N] [--batch N] [--wait REPLICAS] [--tenants N] | consumer [--events N] [--tenants N] | load [--events USERS] [--runs N] [--store postgres|mongo] | tenants [--tenants N] [--events USERS_EACH] | credits [--events N] | pages [--events N] | e2e [--store mongo|postgres] [--bin-dir DIR] [--rates 50,100,200,400] [--seconds 20] [--burst 20] [--singles 50] | compare --base DIR [--head DIR] [--runs 2] [e2e flags] | sign-in [--wrapper-bin PATH] [--label NAME] [--concurrency 200] [--rounds 5] | export [--wrapper-bin PATH] [--label NAME] [--users 100000]"
            );
            std::process::exit(2);
        }
    }
}

/// The value after `name` among the command's arguments (`--events 20000`).
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn config(db: &TestDatabase, batch_size: i64) -> RelayConfig {
    RelayConfig {
        batch_size,
        poll_interval: Duration::from_millis(500),
        lease_retry: Duration::from_millis(100),
        maintenance_interval: Duration::from_secs(3600),
        retention: Duration::from_secs(3600),
        ..RelayConfig::new(db.url.clone())
    }
}

async fn relay(
    events: usize,
    batch: i64,
    wait_replicas: u32,
    tenant_count: usize,
) -> anyhow::Result<()> {
    let db = fresh_database().await?;
    wrapper::MIGRATOR.run(&db.pool).await?;
    let keys = StreamKeys::new(redis_namespace(), 8).unwrap();
    let redis = redis_client(&redis_url()).await?;
    let mut tenants = Vec::new();
    for _ in 0..tenant_count {
        tenants.push(insert_tenant(&db.pool, &keys).await?);
    }
    // Commit the outbox rows first (4 writers), with no relay running.
    let started = Instant::now();
    let pool = db.pool.clone();
    let tenants = Arc::new(tenants);
    let mut writers = Vec::new();
    for w in 0..4 {
        let (pool, tenants) = (pool.clone(), tenants.clone());
        writers.push(tokio::spawn(async move {
            for i in (w..events * 2).step_by(4) {
                commit_change(&pool, tenants[i % tenants.len()], i as i64).await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    println!(
        "committed {} changes in {:.2?} (setup)",
        events * 2,
        started.elapsed()
    );
    // The second half waits outside `outbox_pending` (as if not yet committed) until the relay
    // leads every partition: then it becomes pending in one transaction, which measures the
    // relay at work without its start-up (leases, fencing, reconciling).
    sqlx::raw_sql(&format!(
        "create table held as select * from outbox_pending order by id offset {events};
         delete from outbox_pending where id in (select id from held);"
    ))
    .execute(&db.pool)
    .await?;

    // Raw: the same payloads, pipelined XADD in batches of 500 to one scratch stream per partition.
    let rows: Vec<(Uuid, i64, String, String, i32)> = sqlx::query_as(
        "select tenant_id, seq, event_type, envelope, partition from outbox
         where id not in (select id from held) order by id",
    )
    .fetch_all(&db.pool)
    .await?;
    let raw_keys = StreamKeys::new(format!("{}raw", keys.namespace()), 8).unwrap();
    let busy = redis_busy(&redis, &["xadd"]).await?;
    let started = Instant::now();
    for chunk in rows.chunks(500) {
        let pipeline = redis.pipeline();
        for (tenant, seq, event_type, envelope, partition) in chunk {
            let fields = stream_fields(event_type, *tenant, *seq, envelope.clone());
            let _: () = pipeline
                .xadd(
                    raw_keys.events(*partition as u32),
                    false,
                    None::<()>,
                    "*",
                    fields,
                )
                .await?;
        }
        let replies: Vec<Result<String, Error>> = pipeline.try_all().await;
        anyhow::ensure!(replies.iter().all(Result::is_ok), "raw XADD failed");
    }
    let raw = started.elapsed();
    let raw_rate = events as f64 / raw.as_secs_f64();
    let raw_busy = redis_busy(&redis, &["xadd"]).await? - busy;
    println!(
        "raw pipelined XADD: {events} entries in {raw:.2?} = {raw_rate:.0}/s (Redis busy in XADD {:.0} ms)",
        raw_busy * 1000.0
    );

    // Relay: publish the committed rows.
    let cancel = CancellationToken::new();
    let relay = Relay::new(
        db.pool.clone(),
        redis.clone(),
        keys.clone(),
        RelayConfig {
            wait_replicas,
            ..config(&db, batch)
        },
    );
    let started = Instant::now();
    let running = tokio::spawn(relay.run(cancel.clone()));
    eventually(Duration::from_secs(600), || async {
        sqlx::query_scalar::<_, i64>("select count(*) from outbox_pending")
            .fetch_one(&db.pool)
            .await
            .map(|n| n == 0)
            .unwrap_or(false)
    })
    .await?;
    let relayed = started.elapsed();
    let relay_rate = events as f64 / relayed.as_secs_f64();
    println!(
        "relay from start (leases, fencing, reconciling): {events} rows published in {relayed:.2?} = {relay_rate:.0}/s ({:.0}% of raw)",
        100.0 * relay_rate / raw_rate
    );
    // Leading every partition now: the held rows become pending at once.
    // The relay's publication: WATCH, GET, MULTI, the XADDs, EXEC (SET once per take-over).
    // EXEC is shown apart: whether its time includes the commands it ran is Redis's business.
    let publishing = ["watch", "get", "multi", "xadd", "set", "unwatch"];
    let busy = redis_busy(&redis, &publishing).await?;
    let exec_busy = redis_busy(&redis, &["exec"]).await?;
    let started = Instant::now();
    sqlx::raw_sql(&format!(
        "begin; insert into outbox_pending select * from held; notify {}; commit;",
        wrapper::outbox::NOTIFY_CHANNEL
    ))
    .execute(&db.pool)
    .await?;
    loop {
        let left: i64 = sqlx::query_scalar("select count(*) from outbox_pending")
            .fetch_one(&db.pool)
            .await?;
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the relay did not publish"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let relayed = started.elapsed();
    let relay_busy = redis_busy(&redis, &publishing).await? - busy;
    let exec_busy = redis_busy(&redis, &["exec"]).await? - exec_busy;
    let relay_rate = events as f64 / relayed.as_secs_f64();
    println!(
        "relay leading every partition: {events} rows published in {relayed:.2?} = {relay_rate:.0}/s ({:.0}% of raw; Redis busy publishing {:.0} ms, EXEC {:.0} ms)",
        100.0 * relay_rate / raw_rate,
        relay_busy * 1000.0,
        exec_busy * 1000.0
    );

    // Latency at a steady load: commit at ~200/s for 10 s while a reader follows every stream.
    // Times are taken just before each commit starts and when the reader sees the entry, so a
    // figure includes the commit itself (an upper bound on commit → stream).
    let sent: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let received: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let reader_stop = CancellationToken::new();
    // One reader per stream: one XREAD over every stream would span slots on a Redis Cluster.
    let mut readers = Vec::new();
    for stream in keys.all_events() {
        let (redis, received, stop) = (
            redis_client(&redis_url()).await?,
            received.clone(),
            reader_stop.clone(),
        );
        readers.push(
            follow_stream(redis, stream, stop, move |_, envelope, at| {
                received.lock().unwrap().insert(envelope.event_id, at);
            })
            .await?,
        );
    }
    let rate = 200u32;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(10) {
        let before = Instant::now();
        let env = commit_change(&db.pool, tenants[(n as usize) % tenants.len()], n as i64).await?;
        sent.lock().unwrap().insert(env.event_id, before);
        n += 1;
        let due = started + Duration::from_secs_f64(n as f64 / f64::from(rate));
        tokio::time::sleep_until(due.into()).await;
    }
    eventually(Duration::from_secs(30), || {
        let (a, b) = (received.lock().unwrap().len(), sent.lock().unwrap().len());
        async move { a >= b }
    })
    .await?;
    reader_stop.cancel();
    for reader in readers {
        reader.await?;
    }
    let received = received.lock().unwrap().clone();
    let mut l: Vec<Duration> = sent
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(id, at)| received.get(id).map(|r| r.saturating_duration_since(*at)))
        .collect();
    l.sort();
    let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
    println!(
        "commit → stream latency at {rate}/s over {} events: p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        l.len(),
        pct(0.50),
        pct(0.99),
        l[l.len() - 1]
    );
    cancel.cancel();
    running.await?;
    Ok(())
}

/// Follow `stream` from its current end (XREAD; "$" per call would miss entries arriving
/// between calls) until `stop`, calling `seen` with each entry's id, its envelope (an entry that
/// does not decode is passed over) and when it was read.
pub(crate) async fn follow_stream(
    redis: Client,
    stream: String,
    stop: CancellationToken,
    mut seen: impl FnMut(String, sync_sdk::contract::Envelope, Instant) + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let newest: Vec<(String, HashMap<String, String>)> =
        redis.xrevrange(&stream, "+", "-", Some(1)).await?;
    let mut last = newest
        .first()
        .map_or_else(|| "0-0".to_owned(), |e| e.0.clone());
    Ok(tokio::spawn(async move {
        while !stop.is_cancelled() {
            let reply: Option<XReadResponse<String, String, String, String>> = redis
                .xread_map(Some(1000), Some(200), stream.clone(), last.clone())
                .await
                .ok();
            let now = Instant::now();
            for (_, entries) in reply.unwrap_or_default() {
                for (id, fields) in entries {
                    last = id.clone();
                    if let Ok(envelope) = sync_sdk::contract::Envelope::from_stream_fields(fields) {
                        seen(id, envelope, now);
                    }
                }
            }
        }
        let _ = redis.quit().await;
    }))
}

/// Seconds Redis has spent running `command` so far (`INFO commandstats`; a script's time
/// includes the commands it runs).
/// Seconds Redis has spent in `commands` so far (`INFO commandstats`; a command run inside
/// `EXEC` counts under its own name).
async fn redis_busy(redis: &Client, commands: &[&str]) -> anyhow::Result<f64> {
    let stats: String = redis
        .info(Some(fred::types::InfoKind::CommandStats))
        .await?;
    let prefixes: Vec<String> = commands.iter().map(|c| format!("cmdstat_{c}:")).collect();
    Ok(stats
        .lines()
        .filter_map(|l| prefixes.iter().find_map(|p| l.strip_prefix(p.as_str())))
        .filter_map(|l| l.split(',').find_map(|kv| kv.strip_prefix("usec=")))
        .filter_map(|v| v.parse::<f64>().ok())
        .sum::<f64>()
        / 1e6)
}

async fn publish_user_events(
    redis: &Client,
    keys: &StreamKeys,
    tenants: &[Uuid],
    events: usize,
) -> anyhow::Result<()> {
    let mut seqs: HashMap<Uuid, i64> = HashMap::new();
    let mut batch = Vec::new();
    for i in 0..events {
        let tenant = tenants[i % tenants.len()];
        let seq = seqs.entry(tenant).or_default();
        *seq += 1;
        batch.push(user_event(tenant, Uuid::now_v7(), 1, *seq, "bench@x.test"));
        if batch.len() == 500 || i + 1 == events {
            let pipeline = redis.pipeline();
            for e in batch.drain(..) {
                let _: () = pipeline
                    .xadd(
                        keys.events_for(e.tenant_id),
                        false,
                        None::<()>,
                        "*",
                        e.to_stream_fields(),
                    )
                    .await?;
            }
            let _: Vec<String> = pipeline.all().await?;
        }
    }
    Ok(())
}

async fn raw_read_ack(
    redis: &Client,
    keys: &StreamKeys,
    events: usize,
) -> anyhow::Result<Duration> {
    for stream in keys.all_events() {
        let _: () = redis.xgroup_create(&stream, "raw", "0", true).await?;
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for stream in keys.all_events() {
        let redis = redis.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            loop {
                let entries =
                    sync_sdk::consumer::read_group(&redis, "raw", "r1", &stream, 100, None).await?;
                let ids: Vec<String> = entries.into_iter().map(|(id, _)| id).collect();
                if ids.is_empty() {
                    return anyhow::Ok(n);
                }
                n += ids.len();
                let _: u64 = redis.xack(&stream, "raw", ids).await?;
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    anyhow::ensure!(total == events, "raw read {total} of {events}");
    Ok(started.elapsed())
}

/// The consumer applying `events` into `store`, the tenants marked loaded first through
/// `setup` (the same store, or one on another client: see the Mongo phase).
async fn consume_into<S: sync_sdk::store::TenantStore>(
    redis: &Client,
    keys: &StreamKeys,
    store: Arc<S>,
    setup: &S,
    tenants: &[Uuid],
    events: usize,
    processed: impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send>>,
) -> anyhow::Result<Duration> {
    for t in tenants {
        setup.mark_loaded(*t, 0).await?;
    }
    let mut config = sync_sdk::consumer::ConsumerConfig::new("crm", keys.clone());
    config.block = Duration::from_millis(100);
    let cancel = CancellationToken::new();
    let consumer = sync_sdk::consumer::Consumer::new(
        redis.clone(),
        store,
        Arc::new(sync_sdk::consumer::NoHandler),
        config,
    );
    let started = Instant::now();
    let running = tokio::spawn(consumer.run(cancel.clone()));
    let deadline = Instant::now() + Duration::from_secs(600);
    // Done when every entry was delivered and acknowledged (after its commit): polled in
    // Redis, so the store under test does no work for the measurement.
    let drained = || async {
        sync_sdk::dlq::lag(redis, keys).await.is_ok_and(|groups| {
            let ours: Vec<_> = groups.iter().filter(|g| g.group == "crm").collect();
            ours.len() == keys.partitions() as usize
                && ours.iter().all(|g| g.lag == Some(0) && g.pending == 0)
        })
    };
    while !drained().await {
        anyhow::ensure!(Instant::now() < deadline, "consumer did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    cancel.cancel();
    running.await??;
    anyhow::ensure!(processed().await == events, "every event recorded once");
    Ok(elapsed)
}

async fn consumer(events: usize, tenant_count: usize) -> anyhow::Result<()> {
    use sync_sdk::store::{mongo::MongoStore, postgres::PostgresStore};
    let redis = redis_client(&redis_url()).await?;
    let tenants: Vec<Uuid> = (0..tenant_count).map(|_| Uuid::now_v7()).collect();

    // Postgres store, with the raw rate on the same entries.
    let keys = StreamKeys::new(redis_namespace(), 8).unwrap();
    publish_user_events(&redis, &keys, &tenants, events).await?;
    let raw = raw_read_ack(&redis, &keys, events).await?;
    let raw_rate = events as f64 / raw.as_secs_f64();
    println!("raw XREADGROUP+XACK: {events} entries in {raw:.2?} = {raw_rate:.0}/s");
    let db = fresh_database().await?;
    let pg = Arc::new(PostgresStore::new(db.pool.clone()));
    pg.init().await?;
    let pool = db.pool.clone();
    let took = consume_into(
        &redis,
        &keys,
        pg.clone(),
        &pg,
        &tenants,
        events,
        move || {
            let pool = pool.clone();
            Box::pin(async move {
                sqlx::query_scalar::<_, i64>("select count(*) from tsync_processed")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(0) as usize
            })
        },
    )
    .await?;
    let rate = events as f64 / took.as_secs_f64();
    println!(
        "consumer → Postgres store: {events} events in {took:.2?} = {rate:.0}/s ({:.0}% of raw)",
        100.0 * rate / raw_rate
    );

    // Mongo store (MongoDB-wire test server), fewer events.
    let mongo_events = (events / 4).max(100);
    let keys = StreamKeys::new(redis_namespace(), 8).unwrap();
    publish_user_events(&redis, &keys, &tenants, mongo_events).await?;
    let mongo = MongoStore::new(fresh_mongo().await?);
    mongo.init().await?;
    // The tenants are marked loaded on a client without retryable writes: the MongoDB-wire
    // test server keeps every retryable write's reply (up to 10,000, for 30 minutes) and, once
    // full, sorts them all on every write, so 10,000 single setup writes would slow down the
    // phase measured after them (and every later run within 30 minutes).
    let mut options = mongodb::options::ClientOptions::parse(mongodb_url()).await?;
    options.retry_writes = Some(false);
    let setup =
        MongoStore::new(mongodb::Client::with_options(options)?.database(mongo.database().name()));
    let processed = mongo
        .database()
        .collection::<mongodb::bson::Document>("tsync_processed");
    let took = consume_into(
        &redis,
        &keys,
        Arc::new(mongo),
        &setup,
        &tenants,
        mongo_events,
        move || {
            let processed = processed.clone();
            Box::pin(async move {
                processed
                    .count_documents(mongodb::bson::doc! {})
                    .await
                    .unwrap_or(0) as usize
            })
        },
    )
    .await?;
    let rate = mongo_events as f64 / took.as_secs_f64();
    println!(
        "consumer → Mongo store (MongoDB-wire test server): {mongo_events} events in {took:.2?} = {rate:.0}/s"
    );
    Ok(())
}

/// The service secret the bench's wrapper knows the app by.
const LOAD_SECRET: &str = "bench-service-secret-long-enough";

/// `bench load`: a tenant of `users` users (plus its admin) lazy-loaded by an app process of
/// its own (`bench load-app`, so its peak RSS is the app's alone, not the wrapper's), `runs`
/// times, each into a fresh store.
async fn load(users: usize, runs: usize, store: &str) -> anyhow::Result<()> {
    let wrapper = tsync_e2e::wrapper_app::spawn_wrapper().await?;
    let tenant = wrapper.create_tenant("big").await;
    let started = Instant::now();
    sqlx::query(
        "insert into users (id, tenant_id, email, full_name)
         select gen_random_uuid(), $1, 'u' || g || '@big.test', 'User ' || g
         from generate_series(1, $2) g",
    )
    .bind(tenant.id)
    .bind(users as i64)
    .execute(&wrapper.db.pool)
    .await?;
    println!(
        "inserted {users} users in {:.2?} (setup)",
        started.elapsed()
    );
    wrapper::startup::upsert_service_client(&wrapper.db.pool, "crm", LOAD_SECRET).await?;
    for run in 1..=runs {
        // The store outlives the child (dropped after it exits).
        let (pg, mongo_db) = match store {
            "mongo" => (None, Some(fresh_mongo().await?)),
            _ => (Some(fresh_database().await?), None),
        };
        let store_arg = match (&pg, &mongo_db) {
            (Some(db), _) => db.url.clone(),
            (_, Some(m)) => m.name().to_owned(),
            _ => unreachable!(),
        };
        let out = tokio::process::Command::new(std::env::current_exe()?)
            .args([
                "load-app",
                &wrapper.url,
                &tenant.id.to_string(),
                store,
                &store_arg,
            ])
            .kill_on_drop(true)
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "load-app failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("run {run}: {}", String::from_utf8_lossy(&out.stdout));
        if let Some(m) = mongo_db {
            m.drop().await?;
        }
    }
    Ok(())
}

/// The CRM's client of the bench's wrapper, as the lazy-load benches use it (pages of 5,000).
fn load_client(wrapper_url: &str) -> sync_sdk::wrapper_client::WrapperClient {
    sync_sdk::wrapper_client::WrapperClient::new(sync_sdk::wrapper_client::WrapperConfig {
        base_url: wrapper_url.to_owned(),
        client_id: "crm".into(),
        client_secret: LOAD_SECRET.into(),
        page_size: 5_000,
        timeout: Duration::from_secs(60),
    })
}

/// The kB figure of a `/proc/self/status` line (`VmHWM`, `VmRSS`).
fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim_start_matches(':')
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// `bench load-app WRAPPER_URL TENANT postgres|mongo DATABASE_URL|MONGO_DB`: the app side of
/// `bench load`, in its own process; prints the load time and the process's peak RSS.
async fn load_app(args: &[String]) -> anyhow::Result<()> {
    use sync_sdk::{
        loader::Loader,
        store::{TenantStore, mongo::MongoStore, postgres::PostgresStore},
        wrapper_client::WrapperClient,
    };
    let [wrapper_url, tenant, store, target] = args else {
        anyhow::bail!("usage: bench load-app WRAPPER_URL TENANT postgres|mongo TARGET");
    };
    let tenant: Uuid = tenant.parse()?;
    let client = load_client(wrapper_url);
    async fn run<S: TenantStore>(
        client: WrapperClient,
        store: Arc<S>,
        tenant: Uuid,
    ) -> anyhow::Result<()> {
        let loader = Loader::new(client, store.clone());
        // Fetch the service token first (an argon2 check at the wrapper), as a running app has.
        loader.client().digest(tenant).await?;
        let before = proc_status_kb("VmRSS");
        let started = Instant::now();
        loader.ensure_tenant(tenant).await?;
        let took = started.elapsed();
        // One query for the count (paging a million documents through the MongoDB-wire
        // server took longer than the load).
        let loaded = store
            .versions(tenant, sync_sdk::store::EntityKind::User)
            .await?
            .len();
        println!(
            "loaded {loaded} users in {took:.2?} ({:.0} users/s); app RSS {} MB before the load, peak {} MB",
            loaded as f64 / took.as_secs_f64(),
            before / 1024,
            proc_status_kb("VmHWM") / 1024
        );
        Ok(())
    }
    match store.as_str() {
        "mongo" => {
            let db = mongodb::Client::with_uri_str(mongodb_url())
                .await?
                .database(target);
            let store = Arc::new(MongoStore::new(db));
            store.init().await?;
            run(client, store, tenant).await
        }
        _ => {
            let store = Arc::new(PostgresStore::new(sqlx::PgPool::connect(target).await?));
            store.init().await?;
            run(client, store, tenant).await
        }
    }
}

/// `bench tenants --tenants N --users U`: N tenants of U users each at the wrapper, every one
/// lazy-loaded once into one Postgres store (16 at a time); the per-tenant load time as the
/// store fills up (first and last tenth of the loads, and all of them).
async fn tenants(count: usize, users: usize) -> anyhow::Result<()> {
    use sync_sdk::{loader::Loader, store::postgres::PostgresStore};
    let wrapper = tsync_e2e::wrapper_app::spawn_wrapper().await?;
    let started = Instant::now();
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
    for chunk in ids.chunks(1_000) {
        let subdomains: Vec<String> = chunk.iter().map(|id| format!("t{}", id.simple())).collect();
        let partitions: Vec<i32> = chunk
            .iter()
            .map(|id| wrapper.state.stream_keys.partition_of(*id) as i32)
            .collect();
        sqlx::query(
            "insert into tenants (id, subdomain, name, partition)
             select id, sub, sub, p from unnest($1::uuid[], $2::text[], $3::int[]) as t(id, sub, p)",
        )
        .bind(chunk)
        .bind(&subdomains)
        .bind(&partitions)
        .execute(&wrapper.db.pool)
        .await?;
        sqlx::query(
            "insert into users (id, tenant_id, email, full_name)
             select gen_random_uuid(), t, 'u' || g || '@' || t || '.test', 'User ' || g
             from unnest($1::uuid[]) as t, generate_series(1, $2) g",
        )
        .bind(chunk)
        .bind(users as i64)
        .execute(&wrapper.db.pool)
        .await?;
    }
    println!(
        "created {count} tenants of {users} users in {:.2?} (setup)",
        started.elapsed()
    );
    wrapper::startup::upsert_service_client(&wrapper.db.pool, "crm", LOAD_SECRET).await?;
    let db = fresh_database().await?;
    let store = Arc::new(PostgresStore::new(db.pool.clone()));
    store.init().await?;
    let loader = Arc::new(Loader::new(load_client(&wrapper.url), store.clone()));
    loader.client().digest(ids[0]).await?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let times: Arc<Mutex<Vec<(usize, Duration)>>> = Arc::default();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (loader, ids, next, times) = (loader.clone(), ids.clone(), next.clone(), times.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(id) = ids.get(i) else {
                    return anyhow::Ok(());
                };
                let t = Instant::now();
                loader.ensure_tenant(*id).await?;
                times.lock().unwrap().push((i, t.elapsed()));
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let total = started.elapsed();
    let mut times = times.lock().unwrap().clone();
    times.sort_by_key(|t| t.0);
    let summary = |part: &[(usize, Duration)]| {
        let mut l: Vec<Duration> = part.iter().map(|t| t.1).collect();
        l.sort();
        let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
        format!("p50 {:.2?}, p99 {:.2?}", pct(0.5), pct(0.99))
    };
    let tenth = (count / 10).max(1);
    println!(
        "lazy-loaded {count} tenants in {total:.2?} ({:.0} tenants/s, 16 at a time); per load: first tenth {}, last tenth {}, all {}",
        count as f64 / total.as_secs_f64(),
        summary(&times[..tenth]),
        summary(&times[count - tenth..]),
        summary(&times),
    );
    Ok(())
}

async fn credits(events: usize) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use reqwest::Method;
    use sync_sdk::{
        credits::{CreditMirror, FastOutcome},
        wrapper_client::{WrapperClient, WrapperConfig},
    };
    let wrapper = tsync_e2e::wrapper_app::spawn_wrapper().await?;
    let tenant = wrapper.create_tenant("credits").await;
    let total = (events as i64) * 2;
    // Grants in play: a promotional grant drawn first (priority 10, expiring tomorrow) that the
    // consumptions exhaust part-way, then a paid one; both move to the CRM as two grants.
    let promotional = (events as i64) / 2;
    let tomorrow = chrono::Utc::now() + chrono::TimeDelta::days(1);
    for grant in [
        serde_json::json!({"tenantId": tenant.id, "amount": promotional, "category": "promotional",
                           "priority": 10, "expiresAt": tomorrow}),
        serde_json::json!({"tenantId": tenant.id, "amount": total - promotional}),
    ] {
        wrapper
            .send_ok(
                Method::POST,
                "/api/admin/credits/allocate",
                &wrapper.root,
                grant,
            )
            .await;
    }
    wrapper
        .send_ok(
            Method::POST,
            "/api/admin/credits/allocate/application",
            &tenant.admin,
            serde_json::json!({"tenantId": tenant.id, "application": "crm", "amount": total}),
        )
        .await;
    let secret = "bench-service-secret-long-enough";
    wrapper::startup::upsert_service_client(&wrapper.db.pool, "crm", secret).await?;
    let client = WrapperClient::new(WrapperConfig {
        base_url: wrapper.url.clone(),
        client_id: "crm".into(),
        client_secret: secret.into(),
        page_size: 1000,
        timeout: Duration::from_secs(30),
    });
    // The operations the bench consumes, priced at 1 credit each (the wrapper prices them).
    client
        .register(
            &sync_sdk::contract::AppManifest::new("crm", "CRM")
                .with_operation("warm", 1)
                .with_operation("bench", 1),
        )
        .await?;
    client
        .consume(tenant.id, "crm", "warm", "warm-up", 1)
        .await?
        .ok();

    let direct = (events / 10).max(100);
    let started = Instant::now();
    let ok = futures_util::stream::iter(0..direct)
        .map(|i| {
            let client = &client;
            let tenant = tenant.id;
            async move {
                client
                    .consume(tenant, "crm", "bench", &format!("d-{i}"), 1)
                    .await
            }
        })
        .buffer_unordered(32)
        .filter(|r| std::future::ready(matches!(r, Ok(Ok(_)))))
        .count()
        .await;
    let took = started.elapsed();
    anyhow::ensure!(ok == direct, "{ok} of {direct} direct consumes charged");
    println!(
        "direct path: {direct} consumes in {took:.2?} = {:.0}/s",
        direct as f64 / took.as_secs_f64()
    );

    let keys = StreamKeys::new(wrapper.state.settings.namespace.clone(), 8).unwrap();
    // The reconciliation provisions the CRM's mirror from the ledger, grant by grant.
    let redis = redis_client(&redis_url()).await?;
    wrapper::credit_ingest::CreditIngest::new(wrapper.db.pool.clone(), redis.clone(), keys.clone())
        .reconcile()
        .await?;
    let mirror = CreditMirror::new(redis, keys);
    anyhow::ensure!(
        mirror.balance(tenant.id, "crm").await? == Some(total - direct as i64 - 1),
        "the mirror holds what the ledger holds"
    );
    let started = Instant::now();
    let ok = futures_util::stream::iter(0..events)
        .map(|i| {
            let mirror = &mirror;
            let tenant = tenant.id;
            async move {
                mirror
                    .consume(tenant, "crm", "bench", &format!("f-{i}"), 1)
                    .await
            }
        })
        .buffer_unordered(32)
        .filter(|r| std::future::ready(matches!(r, Ok(FastOutcome::Charged(_)))))
        .count()
        .await;
    let took = started.elapsed();
    anyhow::ensure!(ok == events, "{ok} of {events} fast consumes charged");
    println!(
        "fast path: {events} consumes in {took:.2?} = {:.0}/s",
        events as f64 / took.as_secs_f64()
    );
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn pages(renders: usize) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let suite = tsync_e2e::suite::Suite::start(|_| {}).await?;
    let tenant = suite.wrapper.create_tenant("acme").await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let host = suite.host("acme");
    let origin = format!("http://{host}");
    let form = format!(
        "email=admin%40acme.test&password={}&return_to=%2Fcrm%2F",
        sync_sdk::html::url_encode(tsync_e2e::wrapper_app::PASSWORD)
    );
    let mut sign_ins = Vec::new();
    let mut cookie = String::new();
    for _ in 0..20 {
        let started = Instant::now();
        let resp = http
            .post(format!("{}/auth/login", suite.nginx.url()))
            .header("host", &host)
            .header("origin", &origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.clone())
            .send()
            .await?;
        sign_ins.push(started.elapsed());
        anyhow::ensure!(resp.status() == 303, "sign-in: {}", resp.status());
        cookie = resp.headers()["set-cookie"]
            .to_str()?
            .split(';')
            .next()
            .unwrap_or_default()
            .to_owned();
    }
    sign_ins.sort();
    println!(
        "sign-in through nginx (form, argon2, token, cookie): p50 {:.1?}, p99 {:.1?}",
        percentile(&sign_ins, 0.5),
        percentile(&sign_ins, 0.99)
    );
    for (app, base) in [("crm", &suite.crm_url), ("hrms", &suite.hrms_url)] {
        // The first visit lazy-loads the tenant; measure the steady state after it.
        let first = http
            .get(format!("{base}/"))
            .header("cookie", &cookie)
            .header("x-tenant", "acme")
            .send()
            .await?;
        anyhow::ensure!(first.status() == 200, "{app} dashboard: {}", first.status());
        let started = Instant::now();
        let mut latencies: Vec<Duration> = futures_util::stream::iter(0..renders)
            .map(|_| {
                let req = http
                    .get(format!("{base}/"))
                    .header("cookie", &cookie)
                    .header("x-tenant", "acme");
                async move {
                    let t = Instant::now();
                    let resp = req.send().await.expect("the app answers");
                    assert_eq!(resp.status(), 200);
                    let _ = resp.bytes().await;
                    t.elapsed()
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let took = started.elapsed();
        latencies.sort();
        println!(
            "{app} dashboard: {renders} renders in {took:.2?} = {:.0}/s, p50 {:.1?}, p99 {:.1?}",
            renders as f64 / took.as_secs_f64(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99)
        );
    }
    let _ = tenant;
    Ok(())
}
