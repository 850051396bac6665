//! Scheduled jobs that run once per tick across the wrapper's replicas (credit mirror
//! reconciliation, credit grants): replicas wake at the same interval boundaries and the one
//! whose `job_runs` row for the tick lands runs it.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Call `run` at every boundary of `every` (zero: never) until cancelled, on the one replica
/// that claims the tick (see [`claim_tick`]); replicas wake at the same boundaries.
pub async fn on_ticks<F, Fut>(
    db: PgPool,
    job: &str,
    every: Duration,
    cancel: CancellationToken,
    mut run: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if every.is_zero() {
        return;
    }
    let runner = format!("pid {}", std::process::id());
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let tick = now.as_millis() / every.as_millis() + 1;
        let due = Duration::from_millis((tick * every.as_millis()) as u64) - now;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(due) => {},
        }
        match claim_tick(&db, job, tick as i64, &runner).await {
            Ok(true) => run().await,
            Ok(false) => {}
            Err(e) => tracing::warn!(job, error = %e, "could not claim the job's run"),
        }
    }
}

/// Claim run `tick` of `job` for `runner`: true for the one replica whose claim lands first.
/// Claims older than a week are deleted on the way.
pub async fn claim_tick(
    db: &PgPool,
    job: &str,
    tick: i64,
    runner: &str,
) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query(
        "insert into job_runs (job, tick, runner) values ($1, $2, $3) on conflict do nothing",
    )
    .bind(job)
    .bind(tick)
    .bind(runner)
    .execute(db)
    .await?
    .rows_affected()
        == 1;
    if claimed {
        sqlx::query(
            "delete from job_runs where job = $1 and started_at < now() - interval '7 days'",
        )
        .bind(job)
        .execute(db)
        .await?;
    }
    Ok(claimed)
}
