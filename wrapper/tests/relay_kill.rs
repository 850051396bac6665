//! The leading relay process killed with SIGKILL while publishing: a standby relay takes the
//! partitions over; nothing is missing, and duplicates (if any) carry the same eventId.

use std::{process::Stdio, time::Duration};

use sync_contract::StreamKeys;
use sync_testkit::*;
use tokio::process::{Child, Command};
use wrapper::outbox::testing::{commit_change, insert_tenant};

fn start_relay(db_url: &str, ns: &str) -> std::io::Result<Child> {
    Command::new(env!("CARGO_BIN_EXE_wrapper"))
        .arg("relay")
        .env("DATABASE_URL", db_url)
        .env("REDIS_URL", redis_url())
        .env("TSYNC_NAMESPACE", ns)
        .env("WRAPPER_RELAY_BATCH_SIZE", "50")
        .env("WRAPPER_RELAY_LEASE_RETRY_MS", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

#[tokio::test]
async fn leader_killed_mid_stream_standby_takes_over_and_nothing_is_lost() -> anyhow::Result<()> {
    let db = fresh_database().await?;
    wrapper::MIGRATOR.run(&db.pool).await?;
    let ns = redis_namespace();
    let keys = StreamKeys::new(ns.clone(), 8).unwrap();
    let mut tenants = Vec::new();
    for _ in 0..20 {
        tenants.push(insert_tenant(&db.pool, &keys).await?);
    }
    for i in 0..2000 {
        commit_change(&db.pool, tenants[i % tenants.len()], i as i64).await?;
    }
    let redis = redis_client(&redis_url()).await?;
    let unpublished = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from outbox_pending")
            .fetch_one(&db.pool)
            .await
            .unwrap_or(-1)
    };

    let mut first = start_relay(&db.url, &ns)?;
    // A standby replica starts while the first leads every partition.
    eventually(Duration::from_secs(60), || async {
        unpublished().await < 2000
    })
    .await?;
    let mut standby = start_relay(&db.url, &ns)?;
    // Kill the leader once it has published some, but not all.
    eventually(Duration::from_secs(60), || async {
        let left = unpublished().await;
        (0..1900).contains(&left)
    })
    .await?;
    first.kill().await?;
    let left_after_kill = unpublished().await;
    assert!(
        left_after_kill > 0,
        "the relay was killed before it finished"
    );

    // The standby takes the partitions over (its lease attempts succeed once the dead
    // leader's connections are gone) and publishes the rest.
    eventually(Duration::from_secs(60), || async {
        unpublished().await == 0
    })
    .await?;
    standby.kill().await?;

    let events = read_all_events(&redis, &keys).await?;
    assert_eq!(
        check_per_tenant_order(&events),
        2000,
        "every event is on the streams"
    );
    eprintln!(
        "killed with {left_after_kill} unpublished; {} entries for 2000 events",
        events.len()
    );
    Ok(())
}
