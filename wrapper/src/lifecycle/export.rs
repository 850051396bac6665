//! A tenant's export: the wrapper's rows of the tenant and what every app uploaded, as one tar
//! archive of JSON Lines files — `wrapper/<table>.jsonl`, `<app>/<collection>.jsonl` — built
//! once every registered app confirmed, kept in `export_archives` for the tenant's admins to
//! download (`GET /api/operations/{id}/archive`).
//!
//! What is left out: password hashes, domain challenge tokens, signing keys and service
//! secrets (none of them is the tenant's data). Every row is selected by the tenant's id, so
//! nothing of another tenant can enter.

use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

/// The wrapper's tables of a tenant, with the query that selects its rows as JSON (secrets
/// removed), in a stable order.
const TABLES: &[(&str, &str)] = &[
    (
        "tenants",
        "select (to_jsonb(t) - 'domain_challenge')::text from tenants t where id = $1",
    ),
    (
        "users",
        "select (to_jsonb(u) - 'password_hash')::text from users u where tenant_id = $1 order by id",
    ),
    (
        "roles",
        "select to_jsonb(r)::text from roles r where tenant_id = $1 order by id",
    ),
    (
        "memberships",
        "select to_jsonb(m)::text from memberships m where tenant_id = $1 order by id",
    ),
    (
        "settings",
        "select to_jsonb(s)::text from settings s where tenant_id = $1",
    ),
    (
        "user_identities",
        "select to_jsonb(i)::text from user_identities i where tenant_id = $1 order by user_id",
    ),
    (
        "credit_balances",
        "select to_jsonb(b)::text from credit_balances b where tenant_id = $1 order by scope",
    ),
    (
        "credit_ledger",
        "select to_jsonb(l)::text from credit_ledger l where tenant_id = $1 order by id",
    ),
    (
        "credit_grants",
        "select to_jsonb(g)::text from credit_grants g where tenant_id = $1 order by id",
    ),
    (
        "credit_thresholds",
        "select to_jsonb(t)::text from credit_thresholds t where tenant_id = $1 order by id",
    ),
    (
        "webhook_endpoints",
        "select (to_jsonb(w) - 'secret')::text from webhook_endpoints w where tenant_id = $1 order by id",
    ),
    (
        "credit_configs",
        "select to_jsonb(c)::text from credit_configs c where tenant_id = $1 order by id",
    ),
    (
        "audit_log",
        "select to_jsonb(a)::text from audit_log a where tenant_id = $1 order by id",
    ),
];

/// Record one uploaded chunk of an app's collection. Returns false when the operation is not a
/// pending export.
pub async fn store_part(
    db: impl sqlx::PgExecutor<'_>,
    operation_id: Uuid,
    app: &str,
    collection: &str,
    chunk: i32,
    content: &[u8],
) -> Result<bool, sqlx::Error> {
    let lines = content
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count() as i64;
    let stored = sqlx::query(
        "insert into export_parts (operation_id, source, collection, chunk, lines, content)
         select id, $2, $3, $4, $5, $6 from lifecycle_operations
         where id = $1 and kind = 'export_tenant' and status = 'pending'
         on conflict (operation_id, source, collection, chunk)
             do update set lines = excluded.lines, content = excluded.content",
    )
    .bind(operation_id)
    .bind(app)
    .bind(collection)
    .bind(chunk)
    .bind(lines)
    .bind(content)
    .execute(db)
    .await?
    .rows_affected();
    Ok(stored == 1)
}

/// Build and store the archive of export `operation_id` of `tenant_id` inside `tx`; returns
/// the line count of every file and the archive's size.
pub async fn package(
    tx: &mut PgConnection,
    operation_id: Uuid,
    tenant_id: Uuid,
) -> anyhow::Result<Value> {
    let mut archive = tar::Builder::new(Vec::new());
    let mut files = serde_json::Map::new();
    for (table, query) in TABLES {
        // The queries are the constants above.
        let rows: Vec<String> = sqlx::query_scalar(query)
            .bind(tenant_id)
            .fetch_all(&mut *tx)
            .await?;
        let path = format!("wrapper/{table}.jsonl");
        let mut content = rows.join("\n").into_bytes();
        if !content.is_empty() {
            content.push(b'\n');
        }
        append(&mut archive, &path, &content)?;
        files.insert(path, json!(rows.len()));
    }
    let parts: Vec<(String, String, i64, Vec<u8>)> = sqlx::query_as(
        "select source, collection, lines, content from export_parts
         where operation_id = $1 order by source, collection, chunk",
    )
    .bind(operation_id)
    .fetch_all(&mut *tx)
    .await?;
    // Chunks of one collection become one file.
    let mut current: Option<(String, Vec<u8>, i64)> = None;
    for (source, collection, lines, content) in parts {
        let path = format!("{source}/{collection}.jsonl");
        match &mut current {
            Some((p, buffer, count)) if *p == path => {
                buffer.extend_from_slice(&content);
                *count += lines;
            }
            _ => {
                if let Some((p, buffer, count)) = current.take() {
                    append(&mut archive, &p, &buffer)?;
                    files.insert(p, json!(count));
                }
                current = Some((path, content, lines));
            }
        }
    }
    if let Some((p, buffer, count)) = current {
        append(&mut archive, &p, &buffer)?;
        files.insert(p, json!(count));
    }
    let bytes = archive.into_inner()?;
    sqlx::query("insert into export_archives (operation_id, content) values ($1, $2)")
        .bind(operation_id)
        .bind(&bytes)
        .execute(&mut *tx)
        .await?;
    sqlx::query("delete from export_parts where operation_id = $1")
        .bind(operation_id)
        .execute(&mut *tx)
        .await?;
    Ok(json!({"files": files, "archiveBytes": bytes.len()}))
}

fn append(archive: &mut tar::Builder<Vec<u8>>, path: &str, content: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
    header.set_cksum();
    archive.append_data(&mut header, path, content)
}

/// The archive of export `operation_id`, once built.
pub async fn archive(
    db: &sqlx::PgPool,
    operation_id: Uuid,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("select content from export_archives where operation_id = $1")
        .bind(operation_id)
        .fetch_optional(db)
        .await
}
