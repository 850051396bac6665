//! The transactional outbox: every change the wrapper accepts is written together with its
//! event, in the caller's transaction, so a change is published if and only if it committed.
//!
//! The tenant's next `seq` is taken with `UPDATE tenants SET last_seq = last_seq + 1 ...
//! RETURNING`, which row-locks the tenant until commit: concurrent writers of one tenant are
//! serialised there, so seq is gap-free and follows commit order. The relay publishes rows whose
//! `published_at` is null (a NOTIFY on `tsync_outbox` wakes it).

use chrono::Utc;
use sqlx::PgConnection;
use sync_sdk::contract::{CONTRACT_VERSION, Envelope, Event};
use uuid::Uuid;

use crate::context::Ctx;

/// The Postgres channel the relay listens on.
pub const NOTIFY_CHANNEL: &str = "tsync_outbox";

/// The aggregate an event is about.
#[derive(Debug, Clone, Copy)]
pub struct Aggregate {
    /// Its id.
    pub id: Uuid,
    /// Its version after the change.
    pub version: i64,
}

/// Append `event` for `tenant_id` to the outbox inside `tx`; returns the envelope written.
pub async fn append(
    tx: &mut PgConnection,
    ctx: &Ctx,
    tenant_id: Uuid,
    aggregate: Aggregate,
    event: Event,
) -> Result<Envelope, sqlx::Error> {
    let seq: i64 = sqlx::query_scalar(
        "update tenants set last_seq = last_seq + 1 where id = $1 returning last_seq",
    )
    .bind(tenant_id)
    .fetch_one(&mut *tx)
    .await?;
    let envelope = Envelope {
        event_id: Uuid::now_v7(),
        event_version: CONTRACT_VERSION,
        tenant_id,
        seq,
        aggregate_id: aggregate.id.to_string(),
        aggregate_version: aggregate.version,
        occurred_at: Utc::now(),
        source: "wrapper".into(),
        correlation_id: Some(ctx.correlation_id.clone()),
        traceparent: None,
        event,
    };
    sqlx::query(
        "insert into outbox (event_id, tenant_id, seq, event_type, envelope)
         values ($1, $2, $3, $4, $5)",
    )
    .bind(envelope.event_id)
    .bind(tenant_id)
    .bind(seq)
    .bind(envelope.event_type().as_str())
    .bind(envelope.to_json())
    .execute(&mut *tx)
    .await?;
    sqlx::query("select pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(&mut *tx)
        .await?;
    tracing::debug!(event_id = %envelope.event_id, seq, event_type = %envelope.event_type(), "outbox append");
    Ok(envelope)
}
