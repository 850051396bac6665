//! Benchmarks against the real servers (not tests: they measure, they do not assert).
//!
//! `cargo run --release -p tsync-e2e --bin bench -- relay [--events N] [--batch N]`
//!
//! relay: raw pipelined XADD of the outbox's payloads vs. the relay publishing the same number
//! of committed outbox rows, on the same Redis in one run; then commit → stream latency at a
//! steady write rate.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fred::{prelude::*, types::streams::XReadResponse};
use sync_sdk::{
    contract::{StreamKeys, stream_fields},
    test_support::*,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wrapper::{
    outbox::testing::{commit_change, insert_tenant},
    relay::{Relay, RelayConfig},
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let events = args
        .iter()
        .position(|a| a == "--events")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000usize);
    let batch = args
        .iter()
        .position(|a| a == "--batch")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(500i64);
    match args.get(1).map(String::as_str) {
        Some("relay") => relay(events, batch).await,
        _ => {
            eprintln!("usage: bench relay [--events N] [--batch N]");
            std::process::exit(2);
        }
    }
}

fn config(db: &TestDatabase, batch_size: i64) -> RelayConfig {
    RelayConfig {
        database_url: db.url.clone(),
        batch_size,
        poll_interval: Duration::from_millis(500),
        lease_retry: Duration::from_millis(100),
        maintenance_interval: Duration::from_secs(3600),
        retention: Duration::from_secs(3600),
    }
}

async fn relay(events: usize, batch: i64) -> anyhow::Result<()> {
    let db = fresh_database().await?;
    wrapper::MIGRATOR.run(&db.pool).await?;
    let keys = StreamKeys::new(redis_namespace(), 8).unwrap();
    let redis = redis_client(&redis_url()).await?;
    let mut tenants = Vec::new();
    for _ in 0..64 {
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
            for i in (w..events).step_by(4) {
                commit_change(&pool, tenants[i % tenants.len()], i as i64).await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    println!(
        "committed {events} changes in {:.2?} (setup)",
        started.elapsed()
    );

    // Raw: the same payloads, pipelined XADD in batches of 500 to one scratch stream per partition.
    let rows: Vec<(Uuid, i64, String, String, i32)> = sqlx::query_as(
        "select tenant_id, seq, event_type, envelope, partition from outbox order by id",
    )
    .fetch_all(&db.pool)
    .await?;
    let raw_keys = StreamKeys::new(format!("{}raw", keys.namespace()), 8).unwrap();
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
    println!("raw pipelined XADD: {events} entries in {raw:.2?} = {raw_rate:.0}/s");

    // Relay: publish the committed rows.
    let cancel = CancellationToken::new();
    let relay = Relay::new(
        db.pool.clone(),
        redis.clone(),
        keys.clone(),
        config(&db, batch),
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
        "relay: {events} rows published in {relayed:.2?} = {relay_rate:.0}/s ({:.0}% of raw)",
        100.0 * relay_rate / raw_rate
    );

    // Latency at a steady load: commit at ~200/s for 10 s while a reader follows every stream.
    // Times are taken just before each commit starts and when the reader sees the entry, so a
    // figure includes the commit itself (an upper bound on commit → stream).
    let sent: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let received: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let reader_stop = CancellationToken::new();
    let reader = {
        let (redis, keys, received, stop) = (
            redis_client(&redis_url()).await?,
            keys.clone(),
            received.clone(),
            reader_stop.clone(),
        );
        tokio::spawn(async move {
            let streams = keys.all_events();
            // Start after each stream's current last entry ("$" per call would miss entries
            // arriving between calls).
            let mut last = Vec::new();
            for s in &streams {
                let newest: Vec<(String, HashMap<String, String>)> = redis
                    .xrevrange(s, "+", "-", Some(1))
                    .await
                    .unwrap_or_default();
                last.push(
                    newest
                        .first()
                        .map_or_else(|| "0-0".to_owned(), |e| e.0.clone()),
                );
            }
            while !stop.is_cancelled() {
                let reply: Option<XReadResponse<String, String, String, String>> = redis
                    .xread_map(Some(1000), Some(200), streams.clone(), last.clone())
                    .await
                    .ok();
                let now = Instant::now();
                for (stream, entries) in reply.unwrap_or_default() {
                    let i = streams.iter().position(|s| *s == stream).unwrap_or(0);
                    for (id, fields) in entries {
                        last[i] = id;
                        if let Ok(env) = sync_sdk::contract::Envelope::from_stream_fields(fields) {
                            received.lock().unwrap().insert(env.event_id, now);
                        }
                    }
                }
            }
        })
    };
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
    reader.await?;
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
