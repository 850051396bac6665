//! The wrapper's side of the credit fast path.
//!
//! * **Ingest.** Apps charge mirrored allocations in Redis and append `credit.consumed` entries
//!   to the partition credit streams; this consumer (group `ledger`) writes each into the
//!   ledger, idempotently by operation id (a redelivered entry is a no-op), with its balance
//!   change and its event in one transaction, and acknowledges it afterwards.
//! * **Reconcile.** [`CreditIngest::reconcile`] compares every mirrored application balance
//!   with the ledger (less what the streams hold that is not ingested yet) and corrects the
//!   mirror, with the allocation ids it has absorbed, for example after Redis lost its data,
//!   and rewrites each mirror's price table from the ledger's prices.

use std::{collections::HashMap, sync::Arc, time::Duration};

use fred::{prelude::*, types::scripts::Script};
use serde::Serialize;
use sqlx::PgPool;
use sync_contract::StreamKeys;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    context::Ctx,
    domain::credits::{Consumption, charge},
};

/// The consumer group of the wrapper on the credit streams.
pub const GROUP: &str = "ledger";

/// A mirror that did not match the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Correction {
    /// The tenant.
    pub tenant_id: Uuid,
    /// The application.
    pub application: String,
    /// What the mirror held (None: missing).
    pub mirror: Option<i64>,
    /// What it holds now.
    pub ledger: i64,
}

/// Ingests credit streams and reconciles mirrors.
pub struct CreditIngest {
    db: PgPool,
    redis: Client,
    keys: StreamKeys,
    reset: Script,
}

impl CreditIngest {
    /// An ingester over `db` and `redis`.
    pub fn new(db: PgPool, redis: Client, keys: StreamKeys) -> Arc<Self> {
        Arc::new(Self {
            db,
            redis,
            keys,
            reset: Script::from_lua(include_str!("credit_mirror.lua")),
        })
    }

    /// Ingest every partition's credit stream until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for partition in 0..self.keys.partitions() {
            tasks.spawn(self.clone().partition_loop(partition, cancel.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn partition_loop(self: Arc<Self>, partition: u32, cancel: CancellationToken) {
        let stream = self.keys.credit_stream(partition);
        let reader = self.redis.clone_new();
        let _connection = reader.connect();
        let mut failures = 0u32;
        while !cancel.is_cancelled() {
            let created: Result<(), Error> =
                self.redis.xgroup_create(&stream, GROUP, "0", true).await;
            let ready = match created {
                Err(e) if !e.details().contains("BUSYGROUP") => Err(e),
                _ => Ok(()),
            };
            let batch = match ready {
                Ok(()) => {
                    sync_contract::streams::read_group(
                        &reader,
                        GROUP,
                        "wrapper",
                        &stream,
                        100,
                        Some(Duration::from_millis(500)),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            let entries = match batch {
                Ok(entries) => entries,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(%stream, error = %e, "credit ingest: read failed");
                    tokio::select! {
                        _ = cancel.cancelled() => {},
                        _ = tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(50)))) => {},
                    }
                    continue;
                }
            };
            failures = 0;
            for (id, fields) in entries {
                match self.ingest(&id, &fields).await {
                    Ok(()) => {
                        let _: Result<u64, Error> =
                            self.redis.xack(&stream, GROUP, id.as_str()).await;
                    }
                    // Left pending: a restart re-reads it (see the note in the closing notes).
                    Err(e) => tracing::error!(%stream, id, error = %e, "credit ingest failed"),
                }
            }
        }
        let _ = reader.quit().await;
    }

    /// Write one fast-path consumption into the ledger (a no-op if its operation id is there).
    pub async fn ingest(
        &self,
        entry_id: &str,
        fields: &HashMap<String, String>,
    ) -> anyhow::Result<()> {
        let get = |k: &str| {
            fields
                .get(k)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("credit entry without {k}"))
        };
        let tenant_id: Uuid = get("tenantId")?.parse()?;
        let application = get("application")?;
        let operation_id = get("operationId")?;
        let operation_code = get("operationCode")?;
        let amount: i64 = get("amount")?.parse()?;
        let ctx = Ctx {
            request_id: format!("credit-ingest:{entry_id}"),
            correlation_id: operation_id.clone(),
            client_ip: None,
            traceparent: None,
        };
        // Absent (or empty) when the app named no user; a malformed id is dropped, not fatal.
        let user_id = get("userId").ok().and_then(|u| u.parse().ok());
        let consumption = Consumption {
            tenant_id,
            application: &application,
            operation_code: &operation_code,
            operation_id: &operation_id,
            amount,
            user_id,
        };
        let mut tx = self.db.begin().await?;
        charge(&mut tx, &ctx, &consumption).await.map_err(|e| {
            anyhow::anyhow!("ledger refuses fast-path consumption {operation_id}: {e}")
        })?;
        tx.commit().await?;
        Ok(())
    }

    /// Correct every application mirror that differs from the ledger; returns the corrections.
    pub async fn reconcile(&self) -> anyhow::Result<Vec<Correction>> {
        let balances: Vec<(Uuid, String, i64)> = sqlx::query_as(
            "select tenant_id, scope, balance from credit_balances where scope like 'app:%' order by 1, 2",
        )
        .fetch_all(&self.db)
        .await?;
        let mut corrections = Vec::new();
        for (tenant_id, scope, ledger_balance) in balances {
            let application = scope.trim_start_matches("app:").to_owned();
            crate::domain::apps::publish_prices(
                &self.db,
                &self.redis,
                &self.keys,
                tenant_id,
                &application,
            )
            .await?;
            for _attempt in 0..5 {
                let in_flight = self.not_yet_ingested(tenant_id, &application).await?;
                let target = ledger_balance - in_flight;
                let balance_key = self.keys.credit_balance(tenant_id, &application);
                let mirror: Option<i64> = self.redis.get(&balance_key).await?;
                if mirror == Some(target) {
                    break;
                }
                let allocations: Vec<Uuid> = sqlx::query_scalar(
                    "select entry_id from credit_ledger where tenant_id = $1 and scope = $2 and kind = 'allocation'",
                )
                .bind(tenant_id)
                .bind(&scope)
                .fetch_all(&self.db)
                .await?;
                let mut args = vec![
                    mirror.map(|m| m.to_string()).unwrap_or_default(),
                    target.to_string(),
                ];
                args.extend(allocations.iter().map(Uuid::to_string));
                let keys = self.keys.credit_mirror_keys(tenant_id, &application);
                let reset: i64 = self
                    .reset
                    .evalsha_with_reload(&self.redis, keys, args)
                    .await?;
                if reset == 1 {
                    tracing::warn!(%tenant_id, %application, ?mirror, target, "credit mirror corrected");
                    metrics::counter!("tsync_wrapper_credit_mirror_corrections_total").increment(1);
                    corrections.push(Correction {
                        tenant_id,
                        application: application.clone(),
                        mirror,
                        ledger: target,
                    });
                    break;
                }
            }
        }
        Ok(corrections)
    }

    /// Credits charged on the stream for this tenant and app but not in the ledger yet.
    async fn not_yet_ingested(&self, tenant_id: Uuid, application: &str) -> anyhow::Result<i64> {
        let stream = self.keys.credit_stream(self.keys.partition_of(tenant_id));
        let entries: Vec<(String, HashMap<String, String>)> =
            self.redis.xrange(&stream, "-", "+", None).await?;
        let tenant = tenant_id.to_string();
        let mut total = 0;
        for (_, f) in entries {
            if f.get("tenantId") != Some(&tenant)
                || f.get("application").map(String::as_str) != Some(application)
            {
                continue;
            }
            let Some(op) = f.get("operationId") else {
                continue;
            };
            let ingested: bool = sqlx::query_scalar(
                "select exists(select 1 from credit_ledger where tenant_id = $1 and operation_id = $2 and kind = 'consumption')",
            )
            .bind(tenant_id)
            .bind(op)
            .fetch_one(&self.db)
            .await?;
            if !ingested {
                total += f
                    .get("amount")
                    .and_then(|a| a.parse::<i64>().ok())
                    .unwrap_or(0);
            }
        }
        Ok(total)
    }
}
