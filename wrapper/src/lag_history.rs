//! How far behind each app was, over time: on a schedule (once per tick across the wrapper's
//! replicas, [`crate::jobs::on_ticks`]) the wrapper reads each registered app's replica reports
//! (`{ns}:status:{app}`, written by the SDK every 5 s) and appends the freshest one's per
//! partition lag and pending count to the app's lag-history stream
//! ([`sync_contract::StreamKeys::lag_history`]), capped to [`KEEP`] samples. The console draws
//! it; a tick with no fresh report writes nothing, so a silent app shows as a gap.

use std::time::Duration;

use fred::prelude::*;
use serde_json::Value;
use sqlx::PgPool;
use sync_contract::StreamKeys;
use tokio_util::sync::CancellationToken;

/// Samples kept per app (about a day at the default 15 s).
pub const KEEP: i64 = 6_000;

/// A report older than this is not the replica's current state (the SDK reports every 5 s,
/// every second while not ready): not sampled here, shown as silent by the sync-health report.
pub const FRESH_MS: u64 = 20_000;

/// One sample: when (Unix ms) and `(lag, pending)` per partition, in partition order.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub at_ms: u64,
    pub partitions: Vec<(u64, u64)>,
}

/// Now, in Unix milliseconds (the unit of reports and samples).
pub fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

/// `(lag, pending)` per partition from the freshest of `reports` (the JSON of the SDK's
/// replica reports), if one is fresh.
pub fn freshest(reports: impl IntoIterator<Item = Value>, now_ms: u64) -> Option<Vec<(u64, u64)>> {
    let report = reports
        .into_iter()
        .filter(|r| now_ms.saturating_sub(r["reportedAtMs"].as_u64().unwrap_or(0)) <= FRESH_MS)
        .max_by_key(|r| r["reportedAtMs"].as_u64().unwrap_or(0))?;
    let mut parts: Vec<(u64, u64, u64)> = report["health"]["partitions"]
        .as_array()?
        .iter()
        .map(|p| {
            (
                p["partition"].as_u64().unwrap_or(0),
                p["lag"].as_u64().unwrap_or(0),
                p["pending"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    parts.sort();
    Some(parts.into_iter().map(|(_, l, p)| (l, p)).collect())
}

/// Append one sample per registered app with a fresh report.
pub async fn sample(db: &PgPool, redis: &Client, keys: &StreamKeys) -> anyhow::Result<usize> {
    let apps: Vec<String> = sqlx::query_scalar("select name from applications order by name")
        .fetch_all(db)
        .await?;
    let mut written = 0;
    for app in apps {
        let reports: std::collections::HashMap<String, String> =
            redis.hgetall(keys.status(&app)).await?;
        let parsed = reports
            .into_values()
            .filter_map(|r| serde_json::from_str::<Value>(&r).ok());
        let Some(partitions) = freshest(parsed, now_ms()) else {
            continue;
        };
        let encoded =
            serde_json::to_string(&partitions.iter().map(|(l, p)| [*l, *p]).collect::<Vec<_>>())?;
        let _: String = redis
            .xadd(
                keys.lag_history(&app),
                false,
                ("MAXLEN", "~", KEEP),
                "*",
                vec![("p", encoded)],
            )
            .await?;
        written += 1;
    }
    Ok(written)
}

/// `app`'s samples since `since_ms` (Unix ms), oldest first.
pub async fn read(
    redis: &Client,
    keys: &StreamKeys,
    app: &str,
    since_ms: u64,
) -> Result<Vec<Sample>, Error> {
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = redis
        .xrange(keys.lag_history(app), since_ms.to_string(), "+", None)
        .await?;
    Ok(entries
        .into_iter()
        .filter_map(|(id, fields)| {
            let at_ms = id.split('-').next()?.parse().ok()?;
            let raw: Vec<[u64; 2]> = serde_json::from_str(fields.get("p")?).ok()?;
            Some(Sample {
                at_ms,
                partitions: raw.into_iter().map(|[l, p]| (l, p)).collect(),
            })
        })
        .collect())
}

/// Sample every `every` (zero: never) until cancelled, once per tick across replicas.
pub async fn run_periodically(
    db: PgPool,
    redis: Client,
    keys: StreamKeys,
    every: Duration,
    cancel: CancellationToken,
) {
    crate::jobs::on_ticks(db.clone(), "lag_history", every, cancel, || async {
        if let Err(e) = sample(&db, &redis, &keys).await {
            tracing::warn!(error = %e, "lag history: sampling failed");
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_freshest_report_is_sampled_in_partition_order() {
        let report = |at: u64, lag: u64| {
            json!({"reportedAtMs": at, "health": {"partitions": [
                {"partition": 1, "lag": lag, "pending": 2},
                {"partition": 0, "lag": 7, "pending": 0},
            ]}})
        };
        let now = 100_000;
        assert_eq!(
            freshest([report(95_000, 3), report(99_000, 4)], now),
            Some(vec![(7, 0), (4, 2)])
        );
        assert_eq!(freshest([report(50_000, 3)], now), None, "too old");
        assert_eq!(freshest([], now), None);
    }
}
