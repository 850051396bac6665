//! The transactional outbox: every change the wrapper accepts is written together with its
//! event, in the caller's transaction, so a change is published if and only if it committed.
//!
//! The tenant's next `seq` is taken with `UPDATE tenants SET last_seq = last_seq + 1 ...
//! RETURNING`, which row-locks the tenant until commit: concurrent writers of one tenant are
//! serialised there, so seq is gap-free and follows commit order. The row is listed in
//! `outbox_pending` until the relay published it (a NOTIFY on `tsync_outbox` wakes the relay).

use chrono::Utc;
use sqlx::PgConnection;
use sync_contract::{CONTRACT_VERSION, Envelope, Event};
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

/// Record that aggregate `id` of `tenant_id` is now `state` at `version`: its event
/// (`to_event(state)`) is appended with the tenant's next seq inside `tx`. The one line a
/// handler writes after changing a row: it says what changed, not how the outbox works.
pub async fn record<S: Clone>(
    tx: &mut PgConnection,
    ctx: &Ctx,
    tenant_id: Uuid,
    (id, version): (Uuid, i64),
    to_event: fn(S) -> Event,
    state: &S,
) -> Result<Envelope, sqlx::Error> {
    append(
        tx,
        ctx,
        tenant_id,
        Aggregate { id, version },
        to_event(state.clone()),
    )
    .await
}

/// Append `event` for `tenant_id` to the outbox inside `tx`; returns the envelope written.
pub async fn append(
    tx: &mut PgConnection,
    ctx: &Ctx,
    tenant_id: Uuid,
    aggregate: Aggregate,
    event: Event,
) -> Result<Envelope, sqlx::Error> {
    let (seq, partition): (i64, i32) = sqlx::query_as(
        "update tenants set last_seq = last_seq + 1 where id = $1 returning last_seq, partition",
    )
    .bind(tenant_id)
    .fetch_one(&mut *tx)
    .await?;
    // The span of the write inside the transaction: the relay's publish and every app's apply
    // are its children. Made only when traces are exported; otherwise the caller's own
    // traceparent (if it sent one) is passed on.
    let span = sync_telemetry::exporting().then(
        || tracing::info_span!("outbox.append", event_type = %event.event_type(), %tenant_id, seq),
    );
    let traceparent = span
        .as_ref()
        .and_then(sync_telemetry::traceparent_of)
        .or_else(|| ctx.traceparent.clone());
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
        traceparent,
        event,
    };
    sqlx::query(
        "with ins as (
             insert into outbox (event_id, tenant_id, seq, partition, event_type, envelope, traceparent)
             values ($1, $2, $3, $4, $5, $6, $7) returning id, partition)
         insert into outbox_pending (id, partition) select id, partition from ins",
    )
    .bind(envelope.event_id)
    .bind(tenant_id)
    .bind(seq)
    .bind(partition)
    .bind(envelope.event_type().as_str())
    .bind(envelope.to_json_string())
    .bind(envelope.traceparent.as_deref())
    .execute(&mut *tx)
    .await?;
    sqlx::query("select pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(&mut *tx)
        .await?;
    tracing::debug!(event_id = %envelope.event_id, seq, event_type = %envelope.event_type(), "outbox append");
    Ok(envelope)
}

/// Helpers for tests and benchmarks that need committed changes without going through HTTP.
#[doc(hidden)]
pub mod testing {
    use sqlx::PgPool;
    use sync_contract::{Envelope, Event, StreamKeys, TenantState, TenantStatus};
    use uuid::Uuid;

    use super::{Aggregate, append};
    use crate::context::Ctx;

    /// Insert a tenant row (no event), in the partition `keys` gives it.
    pub async fn insert_tenant(db: &PgPool, keys: &StreamKeys) -> sqlx::Result<Uuid> {
        let id = Uuid::now_v7();
        let sub = format!("t{}", id.simple());
        sqlx::query("insert into tenants (id, name, subdomain, partition) values ($1, $2, $2, $3)")
            .bind(id)
            .bind(&sub)
            .bind(keys.partition_of(id) as i32)
            .execute(db)
            .await?;
        Ok(id)
    }

    /// Commit one change of `tenant` (a theme update) with its event, like the API does.
    pub async fn commit_change(db: &PgPool, tenant: Uuid, n: i64) -> sqlx::Result<Envelope> {
        let mut tx = db.begin().await?;
        let (version, name, subdomain): (i64, String, String) = sqlx::query_as(
            "update tenants set theme = jsonb_build_object('n', $2::bigint), version = version + 1
             where id = $1 returning version, name, subdomain",
        )
        .bind(tenant)
        .bind(n)
        .fetch_one(&mut *tx)
        .await?;
        let state = TenantState {
            id: tenant,
            name,
            subdomain,
            domain: None,
            plan: "free".into(),
            features: vec![],
            theme: serde_json::json!({ "n": n }),
            status: TenantStatus::Active,
        };
        let ctx = Ctx {
            request_id: "test".into(),
            correlation_id: "test".into(),
            client_ip: None,
            traceparent: None,
        };
        let aggregate = Aggregate {
            id: tenant,
            version,
        };
        let envelope = append(
            &mut tx,
            &ctx,
            tenant,
            aggregate,
            Event::TenantUpdated(state),
        )
        .await?;
        tx.commit().await?;
        Ok(envelope)
    }
}
