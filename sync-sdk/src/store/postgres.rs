//! [`TenantStore`] on Postgres (sqlx). Three tables, created by [`PostgresStore::init`]:
//! `tsync_entities` (kind, id → tenant, version, state), `tsync_sync` (tenant → watermarks) and
//! `tsync_processed` (event ids). A batch is one transaction of three multi-row statements:
//! record the event ids (`returning` the fresh ones), upsert the newest state per aggregate
//! gated by version, raise each tenant's `last_seq`.

use std::collections::{HashMap, HashSet};

use sqlx::PgPool;
use uuid::Uuid;

use super::{
    Applied, BatchPlan, EntityKind, LOADING, SnapshotItem, StoreError, SyncState, TenantStore,
    Versioned,
};
use crate::contract::Envelope;

/// A Postgres-backed store.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    db: PgPool,
}

/// Data exceptions (SQLSTATE class 22, e.g. `\u0000` in `jsonb`) and values that cannot be
/// encoded are the data's fault: permanent. Everything else (connections, deadlocks,
/// serialization failures, a pool timeout, a missing table an operator can create) is retried.
fn err(e: sqlx::Error) -> StoreError {
    let permanent = match &e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("22")),
        sqlx::Error::Encode(_) => true,
        _ => false,
    };
    StoreError {
        message: e.to_string(),
        permanent,
    }
}

const SCHEMA: &[&str] = &[
    "create table if not exists tsync_entities (
        kind text not null, id uuid not null, tenant_id uuid not null,
        version bigint not null, state jsonb not null, primary key (kind, id))",
    "create index if not exists tsync_entities_tenant on tsync_entities (tenant_id, kind)",
    "create table if not exists tsync_sync (
        tenant_id uuid primary key, snapshot_seq bigint not null, last_seq bigint not null)",
    "create table if not exists tsync_credit_queue (
        operation_id text primary key, tenant_id uuid not null, application text not null,
        operation_code text not null, amount bigint not null, queued_at timestamptz not null default now())",
    // Consumptions name a quantity of an operation; the wrapper prices them on replay.
    "alter table tsync_credit_queue add column if not exists quantity bigint not null default 1",
    "create table if not exists tsync_processed (
        event_id uuid primary key, tenant_id uuid not null, at timestamptz not null default now())",
];

impl PostgresStore {
    /// A store on `db`; call [`init`](Self::init) once to create its tables.
    pub fn new(db: PgPool) -> Self {
        Self { db }
    }

    /// Create the tables if missing (idempotent).
    pub async fn init(&self) -> Result<(), StoreError> {
        for statement in SCHEMA {
            sqlx::query(statement)
                .execute(&self.db)
                .await
                .map_err(err)?;
        }
        Ok(())
    }
}

impl TenantStore for PostgresStore {
    async fn sync_state(&self, tenant_id: Uuid) -> Result<Option<SyncState>, StoreError> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("select snapshot_seq, last_seq from tsync_sync where tenant_id = $1")
                .bind(tenant_id)
                .fetch_optional(&self.db)
                .await
                .map_err(err)?;
        Ok(row.map(|(snapshot_seq, last_seq)| SyncState {
            snapshot_seq,
            last_seq,
        }))
    }

    async fn mark_loaded(&self, tenant_id: Uuid, watermark: i64) -> Result<(), StoreError> {
        sqlx::query(
            "insert into tsync_sync (tenant_id, snapshot_seq, last_seq) values ($1, $2, $2)
             on conflict (tenant_id) do update set snapshot_seq = excluded.snapshot_seq,
               last_seq = greatest(tsync_sync.last_seq, excluded.last_seq)",
        )
        .bind(tenant_id)
        .bind(watermark)
        .execute(&self.db)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn mark_loading(&self, tenant_id: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "insert into tsync_sync (tenant_id, snapshot_seq, last_seq) values ($1, $2, 0)
             on conflict (tenant_id) do update set snapshot_seq = excluded.snapshot_seq",
        )
        .bind(tenant_id)
        .bind(LOADING)
        .execute(&self.db)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn upsert_many(
        &self,
        tenant_id: Uuid,
        items: Vec<SnapshotItem>,
    ) -> Result<(), StoreError> {
        for chunk in items.chunks(2_000) {
            let kinds: Vec<&str> = chunk.iter().map(|i| i.0.name()).collect();
            let ids: Vec<Uuid> = chunk.iter().map(|i| i.1).collect();
            let versions: Vec<i64> = chunk.iter().map(|i| i.2).collect();
            let states: Vec<sqlx::types::Json<&serde_json::Value>> =
                chunk.iter().map(|i| sqlx::types::Json(&i.3)).collect();
            sqlx::query(
                "insert into tsync_entities (kind, id, tenant_id, version, state)
                 select k, i, $5, v, s from unnest($1::text[], $2::uuid[], $3::bigint[], $4::jsonb[])
                   as t(k, i, v, s)
                 on conflict (kind, id) do update set version = excluded.version, state = excluded.state
                 where tsync_entities.version < excluded.version
                   and tsync_entities.tenant_id = excluded.tenant_id",
            )
            .bind(kinds)
            .bind(ids)
            .bind(versions)
            .bind(states)
            .bind(tenant_id)
            .execute(&self.db)
            .await
            .map_err(err)?;
        }
        Ok(())
    }

    async fn loaded_tenants(&self) -> Result<Vec<Uuid>, StoreError> {
        sqlx::query_scalar("select tenant_id from tsync_sync order by tenant_id")
            .fetch_all(&self.db)
            .await
            .map_err(err)
    }

    async fn loaded_count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("select count(*) from tsync_sync")
            .fetch_one(&self.db)
            .await
            .map_err(err)?;
        Ok(n as u64)
    }

    async fn versions(
        &self,
        tenant_id: Uuid,
        kind: EntityKind,
    ) -> Result<Vec<(Uuid, i64)>, StoreError> {
        sqlx::query_as(
            "select id, version from tsync_entities where tenant_id = $1 and kind = $2 order by id",
        )
        .bind(tenant_id)
        .bind(kind.name())
        .fetch_all(&self.db)
        .await
        .map_err(err)
    }

    async fn is_processed(&self, event_id: Uuid) -> Result<bool, StoreError> {
        sqlx::query_scalar("select exists(select 1 from tsync_processed where event_id = $1)")
            .bind(event_id)
            .fetch_one(&self.db)
            .await
            .map_err(err)
    }

    async fn processed_among(&self, event_ids: &[Uuid]) -> Result<HashSet<Uuid>, StoreError> {
        let found: Vec<Uuid> =
            sqlx::query_scalar("select event_id from tsync_processed where event_id = any($1)")
                .bind(event_ids)
                .fetch_all(&self.db)
                .await
                .map_err(err)?;
        Ok(found.into_iter().collect())
    }

    async fn sync_states(&self, tenants: &[Uuid]) -> Result<HashMap<Uuid, SyncState>, StoreError> {
        let rows: Vec<(Uuid, i64, i64)> = sqlx::query_as(
            "select tenant_id, snapshot_seq, last_seq from tsync_sync where tenant_id = any($1)",
        )
        .bind(tenants)
        .fetch_all(&self.db)
        .await
        .map_err(err)?;
        Ok(rows
            .into_iter()
            .map(|(tenant, snapshot_seq, last_seq)| {
                let state = SyncState {
                    snapshot_seq,
                    last_seq,
                };
                (tenant, state)
            })
            .collect())
    }

    async fn apply_batch(&self, envelopes: &[Envelope]) -> Result<Vec<Applied>, StoreError> {
        if envelopes.is_empty() {
            return Ok(Vec::new());
        }
        // One statement, so one round trip and atomic without BEGIN/COMMIT: record the event
        // ids; of the events recorded now, the newest per aggregate is written where the stored
        // version is older (and the row is the event's tenant's); the watermarks move up.
        // Locks are taken in one order by every batch (ids sorted, then (kind, id) sorted).
        let fresh = BatchPlan::fresh(envelopes, &HashSet::new());
        let (ids, tenants): (Vec<Uuid>, Vec<Uuid>) = fresh.into_iter().unzip();
        let candidates = BatchPlan::candidates(envelopes);
        let (seq_tenants, seqs): (Vec<Uuid>, Vec<i64>) =
            BatchPlan::last_seqs(envelopes).into_iter().unzip();
        let rows: Vec<(bool, Uuid, Option<String>)> = sqlx::query_as(
            "with recorded as (
                insert into tsync_processed (event_id, tenant_id)
                select * from unnest($1::uuid[], $2::uuid[])
                on conflict do nothing returning event_id
             ),
             newest as (
                select distinct on (c.kind, c.id) c.kind, c.id, c.tenant_id, c.version, c.state
                from unnest($3::uuid[], $4::text[], $5::uuid[], $6::uuid[], $7::bigint[], $8::jsonb[])
                    with ordinality as c(event_id, kind, id, tenant_id, version, state, n)
                join recorded r on r.event_id = c.event_id
                order by c.kind, c.id, c.version desc, c.n
             ),
             written as (
                insert into tsync_entities (kind, id, tenant_id, version, state)
                select kind, id, tenant_id, version, state from newest order by kind, id
                on conflict (kind, id) do update set version = excluded.version, state = excluded.state
                where tsync_entities.version < excluded.version
                  and tsync_entities.tenant_id = excluded.tenant_id
                returning kind, id
             ),
             moved as (
                update tsync_sync s set last_seq = greatest(s.last_seq, t.seq)
                from unnest($9::uuid[], $10::bigint[]) as t(tenant_id, seq)
                where s.tenant_id = t.tenant_id
             )
             select true, event_id, null from recorded
             union all select false, id, kind from written",
        )
        .bind(&ids)
        .bind(&tenants)
        .bind(candidates.iter().map(|c| c.0).collect::<Vec<_>>())
        .bind(candidates.iter().map(|c| c.1.name()).collect::<Vec<_>>())
        .bind(candidates.iter().map(|c| c.2).collect::<Vec<_>>())
        .bind(candidates.iter().map(|c| c.3).collect::<Vec<_>>())
        .bind(candidates.iter().map(|c| c.4).collect::<Vec<_>>())
        .bind(
            candidates
                .iter()
                .map(|c| sqlx::types::Json(&c.5))
                .collect::<Vec<_>>(),
        )
        .bind(seq_tenants)
        .bind(seqs)
        .fetch_all(&self.db)
        .await
        .map_err(err)?;
        let recorded: HashSet<Uuid> = rows.iter().filter(|r| r.0).map(|r| r.1).collect();
        let written: HashSet<(&str, Uuid)> = rows
            .iter()
            .filter_map(|r| Some((r.2.as_deref()?, r.1)))
            .collect();
        let seen_before: HashSet<Uuid> = ids
            .into_iter()
            .filter(|id| !recorded.contains(id))
            .collect();
        let plan = BatchPlan::new(envelopes, &seen_before);
        let changed: Vec<usize> = plan
            .writes
            .iter()
            .filter(|w| written.contains(&(w.1.name(), w.2)))
            .map(|w| w.0)
            .collect();
        Ok(plan.outcomes(changed))
    }

    async fn get(
        &self,
        kind: EntityKind,
        tenant_id: Uuid,
        id: Uuid,
    ) -> Result<Option<Versioned>, StoreError> {
        let row: Option<(i64, serde_json::Value)> = sqlx::query_as(
            "select version, state from tsync_entities where kind = $1 and id = $2 and tenant_id = $3",
        )
        .bind(kind.name())
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(&self.db)
        .await
        .map_err(err)?;
        Ok(row.map(|(version, state)| Versioned { version, state }))
    }

    async fn page(
        &self,
        kind: EntityKind,
        tenant_id: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<(Uuid, Versioned)>, StoreError> {
        let rows: Vec<(Uuid, i64, serde_json::Value)> = sqlx::query_as(
            "select id, version, state from tsync_entities
             where kind = $1 and tenant_id = $2 and id > coalesce($3::uuid, '00000000-0000-0000-0000-000000000000')
             order by id limit $4",
        )
        .bind(kind.name())
        .bind(tenant_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.db)
        .await
        .map_err(err)?;
        Ok(rows
            .into_iter()
            .map(|(id, version, state)| (id, Versioned { version, state }))
            .collect())
    }

    async fn credit_cost(
        &self,
        tenant_id: Uuid,
        application: &str,
        operation_code: &str,
    ) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar(
            "select (state->>'cost')::bigint from tsync_entities where kind = $1 and tenant_id = $2
               and state->>'application' = $3 and state->>'operationCode' = $4
               and (state->>'active')::boolean",
        )
        .bind(EntityKind::CreditConfig.name())
        .bind(tenant_id)
        .bind(application)
        .bind(operation_code)
        .fetch_optional(&self.db)
        .await
        .map_err(err)
    }

    async fn memberships_of(
        &self,
        tenant_id: Uuid,
        user_id: Uuid,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        sqlx::query_scalar(
            "select state from tsync_entities where kind = $1 and tenant_id = $2
               and state->>'userId' = $3 and (state->>'active')::boolean",
        )
        .bind(EntityKind::Membership.name())
        .bind(tenant_id)
        .bind(user_id.to_string())
        .fetch_all(&self.db)
        .await
        .map_err(err)
    }
}

impl crate::credits::offline::CreditQueue for PostgresStore {
    async fn enqueue(
        &self,
        c: &crate::credits::offline::QueuedConsumption,
        allowance: i64,
    ) -> Result<crate::credits::offline::Enqueued, StoreError> {
        use crate::credits::offline::Enqueued;
        let mut tx = self.db.begin().await.map_err(err)?;
        // One writer per tenant and application at a time, so the allowance check holds.
        sqlx::query("select pg_advisory_xact_lock(hashtextextended($1 || ':' || $2, 1))")
            .bind(c.tenant_id.to_string())
            .bind(&c.application)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let exists: bool = sqlx::query_scalar(
            "select exists(select 1 from tsync_credit_queue where operation_id = $1)",
        )
        .bind(&c.operation_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
        if exists {
            return Ok(Enqueued::AlreadyQueued);
        }
        let queued: i64 = sqlx::query_scalar(
            "select coalesce(sum(amount), 0)::bigint from tsync_credit_queue where tenant_id = $1 and application = $2",
        )
        .bind(c.tenant_id)
        .bind(&c.application)
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
        if queued + c.amount > allowance {
            return Ok(Enqueued::OverAllowance { queued });
        }
        sqlx::query(
            "insert into tsync_credit_queue (operation_id, tenant_id, application, operation_code, amount, quantity)
             values ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&c.operation_id)
        .bind(c.tenant_id)
        .bind(&c.application)
        .bind(&c.operation_code)
        .bind(c.amount)
        .bind(c.quantity)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(Enqueued::Queued)
    }

    async fn queued(&self) -> Result<Vec<crate::credits::offline::QueuedConsumption>, StoreError> {
        let rows: Vec<(String, Uuid, String, String, i64, i64)> = sqlx::query_as(
            "select operation_id, tenant_id, application, operation_code, amount, quantity
             from tsync_credit_queue order by queued_at, operation_id",
        )
        .fetch_all(&self.db)
        .await
        .map_err(err)?;
        Ok(rows
            .into_iter()
            .map(
                |(operation_id, tenant_id, application, operation_code, amount, quantity)| {
                    crate::credits::offline::QueuedConsumption {
                        operation_id,
                        tenant_id,
                        application,
                        operation_code,
                        quantity,
                        amount,
                    }
                },
            )
            .collect())
    }

    async fn dequeue(&self, operation_id: &str) -> Result<(), StoreError> {
        sqlx::query("delete from tsync_credit_queue where operation_id = $1")
            .bind(operation_id)
            .execute(&self.db)
            .await
            .map_err(err)?;
        Ok(())
    }
}
