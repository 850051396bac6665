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

use fred::prelude::*;
use sqlx::PgPool;
use sync_contract::StreamKeys;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    context::Ctx,
    error::ApiError,
    mirror::Mirror,
    model::credits::{Consumption, charge},
};

/// The consumer group of the wrapper on the credit streams.
pub const GROUP: &str = "ledger";

/// How often entries that failed to ingest (still pending) are tried again.
pub const PENDING_RETRY: Duration = Duration::from_secs(5);

pub use crate::mirror::Correction;

/// How often the ingester looks for apps registered since (their credit streams).
const APPS_REFRESH: Duration = Duration::from_secs(5);

/// An entry read from one of a partition's credit streams: the stream, its owner (none for the
/// shared legacy stream), the entry id and its fields.
type Read = (String, Option<String>, String, HashMap<String, String>);

/// One XREADGROUP over every stream of `streams` (one slot: they share the partition's hash
/// tag): new entries, or with `pending` the entries delivered before and not acknowledged.
async fn read_streams(
    reader: &Client,
    streams: &[(String, Option<String>)],
    pending: bool,
) -> Result<Vec<Read>, Error> {
    let keys: Vec<&str> = streams.iter().map(|(s, _)| s.as_str()).collect();
    let ids: Vec<&str> = vec![if pending { "0" } else { ">" }; keys.len()];
    let block = (!pending).then_some(500);
    let reply: fred::types::Value = reader
        .xreadgroup(GROUP, "wrapper", Some(100), block, false, keys, ids)
        .await?;
    if reply.is_null() {
        return Ok(Vec::new());
    }
    let map: fred::types::streams::XReadResponse<String, String, String, String> =
        reply.into_xread_response()?;
    let mut out = Vec::new();
    for (stream, owner) in streams {
        for (id, fields) in map.get(stream).cloned().unwrap_or_default() {
            out.push((stream.clone(), owner.clone(), id, fields));
        }
    }
    Ok(out)
}

/// Why a credit entry was not charged.
#[derive(Debug, thiserror::Error)]
pub enum Ingest {
    /// It never will be: dead-lettered and acknowledged.
    #[error("refused: {0}")]
    Refused(String),
    /// Not now (the ledger or a grant may allow it later): left pending and tried again.
    #[error(transparent)]
    Retry(#[from] anyhow::Error),
}

/// Ingests credit streams and reconciles mirrors.
pub struct CreditIngest {
    db: PgPool,
    redis: Client,
    keys: StreamKeys,
    mirror: Mirror,
}

impl CreditIngest {
    /// An ingester over `db` and `redis`.
    pub fn new(db: PgPool, redis: Client, keys: StreamKeys) -> Arc<Self> {
        Arc::new(Self {
            mirror: Mirror::new(db.clone(), redis.clone(), keys.clone()),
            db,
            redis,
            keys,
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

    /// The partition's credit streams: every registered app's own (its name is the owner) and
    /// the shared legacy stream (no owner).
    async fn streams_of(&self, partition: u32) -> anyhow::Result<Vec<(String, Option<String>)>> {
        let apps: Vec<String> = sqlx::query_scalar("select name from applications order by name")
            .fetch_all(&self.db)
            .await?;
        let mut streams = vec![(self.keys.credit_stream(partition), None)];
        streams.extend(
            apps.into_iter()
                .map(|app| (self.keys.app_credit_stream(partition, &app), Some(app))),
        );
        Ok(streams)
    }

    async fn partition_loop(self: Arc<Self>, partition: u32, cancel: CancellationToken) {
        let reader = self.redis.clone_new();
        let _connection = reader.connect();
        let mut failures = 0u32;
        let mut last_sweep = None;
        let mut streams: Vec<(String, Option<String>)> = Vec::new();
        let mut listed: Option<std::time::Instant> = None;
        while !cancel.is_cancelled() {
            // Apps register at any time: their streams are looked up again every few seconds
            // (and their groups created, from the start of the stream).
            let stale = listed.is_none_or(|t| t.elapsed() >= APPS_REFRESH);
            let ready = if stale {
                match self.streams_of(partition).await {
                    Ok(found) => {
                        let mut created = Ok(());
                        for (stream, _) in &found {
                            let made: Result<(), Error> =
                                self.redis.xgroup_create(stream, GROUP, "0", true).await;
                            if let Err(e) = made
                                && !e.details().contains("BUSYGROUP")
                            {
                                created = Err(anyhow::Error::from(e));
                                break;
                            }
                        }
                        if created.is_ok() {
                            streams = found;
                            listed = Some(std::time::Instant::now());
                        }
                        created
                    }
                    Err(e) => Err(e),
                }
            } else {
                Ok(())
            };
            // Entries read before and not acknowledged (a failed ingestion, a replica that
            // stopped mid-batch) are tried again every PENDING_RETRY, between new ones: one that
            // keeps failing is logged each time but never holds the partition back.
            let sweep = last_sweep.is_none_or(|t: std::time::Instant| t.elapsed() >= PENDING_RETRY);
            let batch = match ready {
                Ok(()) if streams.is_empty() => Ok(Vec::new()),
                Ok(()) => {
                    if sweep {
                        last_sweep = Some(std::time::Instant::now());
                    }
                    read_streams(&reader, &streams, sweep)
                        .await
                        .map_err(anyhow::Error::from)
                }
                Err(e) => Err(e),
            };
            let entries = match batch {
                Ok(entries) => entries,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(partition, error = %e, "credit ingest: read failed");
                    tokio::select! {
                        _ = cancel.cancelled() => {},
                        _ = tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(50)))) => {},
                    }
                    continue;
                }
            };
            failures = 0;
            for (stream, owner, id, fields) in entries {
                let ingested = match self.ingest_owned(owner.as_deref(), &id, &fields).await {
                    Err(Ingest::Refused(why)) => self.refuse(&stream, &id, &fields, why).await,
                    other => other,
                };
                match ingested {
                    Ok(()) => {
                        let _: Result<u64, Error> =
                            self.redis.xack(&stream, GROUP, id.as_str()).await;
                        // Only an entry read again may have failed before.
                        if sweep {
                            let _: Result<i64, Error> = self
                                .redis
                                .hdel(self.keys.credit_failures(), format!("{stream}/{id}"))
                                .await;
                        }
                    }
                    // Left pending: tried again at the next sweep of pending entries, and shown
                    // (with the reason) until charged.
                    Err(e) => {
                        let e = anyhow::Error::from(e);
                        metrics::counter!("tsync_wrapper_credit_ingest_failures_total")
                            .increment(1);
                        tracing::error!(%stream, id, error = %e, "credit ingest failed; retried later");
                        self.note_failure(&stream, &id, &fields, &e).await;
                    }
                }
            }
        }
        let _ = reader.quit().await;
    }

    /// Record that entry `id` of `stream` could not be charged, and why (its first failure is
    /// kept). A failure to record is logged: the entry stays pending either way.
    async fn note_failure(
        &self,
        stream: &str,
        id: &str,
        fields: &HashMap<String, String>,
        error: &anyhow::Error,
    ) {
        let key = self.keys.credit_failures();
        let field = format!("{stream}/{id}");
        let now = chrono::Utc::now();
        let before: Option<String> = self.redis.hget(&key, &field).await.unwrap_or(None);
        let first = before
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|b| b["firstFailedAt"].as_str().map(str::to_owned))
            .unwrap_or_else(|| now.to_rfc3339());
        let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
        let record = serde_json::json!({
            "stream": stream,
            "entryId": id,
            "tenantId": get("tenantId"),
            "application": get("application"),
            "operationId": get("operationId"),
            "operationCode": get("operationCode"),
            "amount": get("amount").parse::<i64>().ok(),
            "error": format!("{error:#}"),
            "firstFailedAt": first,
            "lastFailedAt": now.to_rfc3339(),
        });
        let written: Result<i64, Error> = self.redis.hset(&key, (field, record.to_string())).await;
        if let Err(e) = written {
            tracing::warn!(error = %e, "credit ingest: could not record a failure");
        }
    }

    /// Dead-letter entry `id` the ledger will never take (`{ns}:dlq:ledger`, with the reason)
    /// instead of trying it every 5 s forever; it is then acknowledged. Ok once it is there.
    async fn refuse(
        &self,
        stream: &str,
        id: &str,
        fields: &HashMap<String, String>,
        why: String,
    ) -> Result<(), Ingest> {
        metrics::counter!("tsync_wrapper_credit_entries_refused_total").increment(1);
        tracing::warn!(%stream, id, why, "credit ingest: entry refused; dead-lettered");
        let letter = sync_contract::dlq::DeadLetter::new(stream, id, fields, why, 0);
        sync_contract::dlq::push(&self.redis, &self.keys, GROUP, &letter)
            .await
            .map_err(|e| Ingest::Retry(e.into()))
    }

    /// [`ingest`](Self::ingest) an entry read from `owner`'s own stream: it must name `owner`
    /// as its application (only `owner` may write that stream under the Redis ACLs, so an
    /// entry naming another app is a forgery, refused). Entries of the shared legacy stream
    /// (`owner` none) are taken as they say.
    pub async fn ingest_owned(
        &self,
        owner: Option<&str>,
        entry_id: &str,
        fields: &HashMap<String, String>,
    ) -> Result<(), Ingest> {
        if let Some(owner) = owner
            && fields.get("application").map(String::as_str) != Some(owner)
        {
            return Err(Ingest::Refused(format!(
                "an entry of {owner}'s credit stream names another application"
            )));
        }
        self.ingest(entry_id, fields).await
    }

    /// Write one fast-path consumption into the ledger (a no-op if its operation id is there).
    /// An entry that can never be charged (malformed, or for a tenant whose plan lacks the app)
    /// is [`Ingest::Refused`]; a ledger refusal that may pass later (no grant covers it yet)
    /// is [`Ingest::Retry`].
    pub async fn ingest(
        &self,
        entry_id: &str,
        fields: &HashMap<String, String>,
    ) -> Result<(), Ingest> {
        let get = |k: &str| {
            fields
                .get(k)
                .cloned()
                .ok_or_else(|| Ingest::Refused(format!("credit entry without {k}")))
        };
        let parsed = |k: &str, e: &dyn std::fmt::Display| Ingest::Refused(format!("{k}: {e}"));
        let tenant_id: Uuid = get("tenantId")?
            .parse()
            .map_err(|e| parsed("tenantId", &e))?;
        let application = get("application")?;
        let operation_id = get("operationId")?;
        let operation_code = get("operationCode")?;
        let amount: i64 = get("amount")?.parse().map_err(|e| parsed("amount", &e))?;
        if amount <= 0 {
            return Err(Ingest::Refused("amount: must be positive".into()));
        }
        // Only for a tenant whose plan has the app: an entry naming another tenant (forged,
        // or written for a tenant that lost the app) charges nothing.
        match crate::model::apps::require_tenant_has_app(&self.db, &application, tenant_id).await {
            Ok(()) => {}
            Err(e @ (ApiError::FeatureMissing { .. } | ApiError::NotFound(_))) => {
                return Err(Ingest::Refused(e.to_string()));
            }
            Err(e) => return Err(Ingest::Retry(e.into())),
        }
        let ctx = Ctx {
            request_id: format!("credit-ingest:{entry_id}"),
            correlation_id: operation_id.clone(),
            client_ip: None,
            traceparent: None,
        };
        // Absent (or empty) when the app named no user; a malformed id is dropped, not fatal.
        let user_id = get("userId").ok().and_then(|u| u.parse().ok());
        // The grants the mirror drew (absent in entries written before grants).
        let drawn = fields.get("draws").map(|d| crate::mirror::drawn(d));
        let consumption = Consumption {
            tenant_id,
            application: &application,
            operation_code: &operation_code,
            operation_id: &operation_id,
            amount,
            user_id,
            drawn,
        };
        let retry = |e: anyhow::Error| Ingest::Retry(e);
        let mut tx = self.db.begin().await.map_err(|e| retry(e.into()))?;
        charge(&mut tx, &ctx, &consumption).await.map_err(|e| {
            retry(anyhow::anyhow!(
                "ledger refuses fast-path consumption {operation_id}: {e}"
            ))
        })?;
        tx.commit().await.map_err(|e| retry(e.into()))?;
        Ok(())
    }

    /// Correct every application mirror that differs from the ledger (and republish its
    /// prices); returns the corrections.
    pub async fn reconcile(&self) -> anyhow::Result<Vec<Correction>> {
        let balances: Vec<(Uuid, String)> = sqlx::query_as(
            "select tenant_id, scope from credit_balances where scope like 'app:%' order by 1, 2",
        )
        .fetch_all(&self.db)
        .await?;
        let mut corrections = Vec::new();
        for (tenant_id, scope) in balances {
            let application = scope.trim_start_matches("app:");
            corrections.extend(self.mirror.reconcile(tenant_id, application).await?);
        }
        Ok(corrections)
    }
}
