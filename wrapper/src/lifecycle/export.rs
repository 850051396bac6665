//! A tenant's export: the wrapper's rows of the tenant and what every app uploaded, as one tar
//! archive of JSON Lines files — `wrapper/<table>.jsonl`, `<app>/<collection>.jsonl` — built
//! once every registered app confirmed, kept in `export_archive_chunks` (1 MiB each) for the
//! tenant's admins to download (`GET /api/operations/{id}/archive`, streamed a chunk at a
//! time). Neither the packaging nor a download holds the whole tenant in memory.
//!
//! What goes in is an allow-list: each table's columns are named below, so a column added
//! later (a new secret, a token, a key) is left out until someone decides it is the tenant's
//! data. Left out today: password hashes, domain challenge tokens, webhook secrets (sealed or
//! not) and their key ids, signing keys, service secrets and the hub's own bookkeeping (a
//! tenant's partition and sequence). Every row is selected by the tenant's id, so nothing of
//! another tenant can enter.

use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

/// The wrapper's tables of a tenant: (table, exported columns, the rows of the tenant `$1`,
/// their order), in a stable order.
const TABLES: &[(&str, &str, &str, &str)] = &[
    (
        "tenants",
        "id, name, subdomain, domain, plan, features, theme, status, version, created_at, \
         updated_at, pending_domain, archived_at",
        "id = $1",
        "id",
    ),
    (
        "users",
        "id, tenant_id, email, full_name, avatar_url, email_verified, active, version, \
         deleted_at, created_at, updated_at",
        "tenant_id = $1",
        "id",
    ),
    (
        "roles",
        "id, tenant_id, name, permissions, deleted, version, created_at, updated_at",
        "tenant_id = $1",
        "id",
    ),
    (
        "memberships",
        "id, tenant_id, user_id, role_id, active, version, created_at, updated_at",
        "tenant_id = $1",
        "id",
    ),
    (
        "settings",
        "tenant_id, values, version, updated_at",
        "tenant_id = $1",
        "tenant_id",
    ),
    (
        "user_identities",
        "provider, tenant_id, subject, user_id, email, created_at",
        "tenant_id = $1",
        "user_id, provider",
    ),
    (
        "credit_balances",
        "tenant_id, scope, balance, version",
        "tenant_id = $1",
        "scope",
    ),
    (
        "credit_ledger",
        "id, entry_id, tenant_id, kind, scope, source_scope, amount, application, \
         operation_code, operation_id, balance_after, created_at, user_id, grant_id, draws",
        "tenant_id = $1",
        "id",
    ),
    (
        "credit_grants",
        "id, tenant_id, scope, parent_id, category, priority, effective_at, expires_at, \
         recurrence, rollover, rollover_cap, amount, initial, remaining, next_renewal_at, \
         status, version, created_at",
        "tenant_id = $1",
        "id",
    ),
    (
        "credit_thresholds",
        "id, tenant_id, scope, kind, value, armed, version, created_at",
        "tenant_id = $1",
        "id",
    ),
    (
        "webhook_endpoints",
        "id, tenant_id, url, event_types, active, created_at",
        "tenant_id = $1",
        "id",
    ),
    (
        "credit_configs",
        "id, tenant_id, application, operation_code, cost, active, version, updated_at",
        "tenant_id = $1",
        "id",
    ),
    (
        "audit_log",
        "id, tenant_id, actor_id, action, target, outcome, details, request_id, created_at, \
         reported_by",
        "tenant_id = $1",
        "id",
    ),
];

/// The query selecting a table's exported rows as JSON text.
fn export_query(table: &str, columns: &str, filter: &str, order: &str) -> String {
    format!(
        "select to_jsonb(x)::text from (select {columns} from {table} where {filter} order by {order}) x"
    )
}

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

/// The size of one stored chunk of a built archive.
const CHUNK: usize = 1 << 20;

/// Build export `operation_id` of `tenant_id` inside `tx` and store it as chunks of at most
/// 1 MiB; returns the line count of every file and the archive's size. Rows are streamed
/// from Postgres into a file of a temporary directory, one file of the archive at a time, and
/// the archive is stored a chunk at a time: memory holds one row or one uploaded part and one
/// chunk, whatever the tenant's size (the disk holds the archive while it is built).
pub async fn package(
    tx: &mut PgConnection,
    operation_id: Uuid,
    tenant_id: Uuid,
) -> anyhow::Result<Value> {
    use futures_util::TryStreamExt;
    use std::io::{BufWriter, Read, Write};
    let dir = Scratch::new(operation_id)?;
    let tar_path = dir.0.join("archive.tar");
    let mut archive = tar::Builder::new(BufWriter::new(std::fs::File::create(&tar_path)?));
    let mut files = serde_json::Map::new();
    let file_path = dir.0.join("file");
    for (table, columns, filter, order) in TABLES {
        let mut out = BufWriter::new(std::fs::File::create(&file_path)?);
        let mut count = 0u64;
        // Built from the constants above, never from input.
        let query = export_query(table, columns, filter, order);
        let mut rows = sqlx::query_scalar::<_, String>(&query)
            .bind(tenant_id)
            .fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            out.write_all(row.as_bytes())?;
            out.write_all(b"\n")?;
            count += 1;
        }
        drop(rows);
        out.flush()?;
        drop(out);
        let path = format!("wrapper/{table}.jsonl");
        append_file(&mut archive, &path, &file_path)?;
        files.insert(path, json!(count));
    }
    // The apps' parts, one chunk read at a time; the chunks of one collection make one file.
    let index: Vec<(String, String, i32, i64)> = sqlx::query_as(
        "select source, collection, chunk, lines from export_parts
         where operation_id = $1 order by source, collection, chunk",
    )
    .bind(operation_id)
    .fetch_all(&mut *tx)
    .await?;
    let mut current: Option<(String, BufWriter<std::fs::File>, i64)> = None;
    for (source, collection, chunk, lines) in index {
        let path = format!("{source}/{collection}.jsonl");
        if current.as_ref().is_some_and(|(p, _, _)| *p != path)
            && let Some((p, mut out, count)) = current.take()
        {
            out.flush()?;
            drop(out);
            append_file(&mut archive, &p, &file_path)?;
            files.insert(p, json!(count));
        }
        if current.is_none() {
            current = Some((path, BufWriter::new(std::fs::File::create(&file_path)?), 0));
        }
        let content: Vec<u8> = sqlx::query_scalar(
            "select content from export_parts
             where operation_id = $1 and source = $2 and collection = $3 and chunk = $4",
        )
        .bind(operation_id)
        .bind(&source)
        .bind(&collection)
        .bind(chunk)
        .fetch_one(&mut *tx)
        .await?;
        if let Some((_, out, count)) = &mut current {
            out.write_all(&content)?;
            *count += lines;
        }
    }
    if let Some((p, mut out, count)) = current {
        out.flush()?;
        drop(out);
        append_file(&mut archive, &p, &file_path)?;
        files.insert(p, json!(count));
    }
    archive.into_inner()?.flush()?;
    // Stored a chunk at a time.
    let mut reader = std::fs::File::open(&tar_path)?;
    let mut buffer = vec![0u8; CHUNK];
    let (mut seq, mut total) = (0i32, 0u64);
    loop {
        let mut filled = 0;
        while filled < CHUNK {
            let n = reader.read(&mut buffer[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        sqlx::query(
            "insert into export_archive_chunks (operation_id, seq, content) values ($1, $2, $3)",
        )
        .bind(operation_id)
        .bind(seq)
        .bind(&buffer[..filled])
        .execute(&mut *tx)
        .await?;
        seq += 1;
        total += filled as u64;
        if filled < CHUNK {
            break;
        }
    }
    sqlx::query("delete from export_parts where operation_id = $1")
        .bind(operation_id)
        .execute(&mut *tx)
        .await?;
    Ok(json!({"files": files, "archiveBytes": total, "chunks": seq}))
}

/// A directory of the system's temporary one for one packaging, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(operation_id: Uuid) -> std::io::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("tsync-export-{operation_id}-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Append the file at `source` to `archive` as `path`.
fn append_file<W: std::io::Write>(
    archive: &mut tar::Builder<W>,
    path: &str,
    source: &std::path::Path,
) -> std::io::Result<()> {
    let mut file = std::fs::File::open(source)?;
    let mut header = tar::Header::new_gnu();
    header.set_size(file.metadata()?.len());
    header.set_mode(0o644);
    header.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
    header.set_cksum();
    archive.append_data(&mut header, path, &mut file)
}

/// The chunk numbers of the archive of export `operation_id` and its size, once built.
pub async fn archive_chunks(
    db: &sqlx::PgPool,
    operation_id: Uuid,
) -> Result<Option<(Vec<i32>, i64)>, sqlx::Error> {
    let chunks: Vec<(i32, i64)> = sqlx::query_as(
        "select seq, octet_length(content)::bigint from export_archive_chunks
         where operation_id = $1 order by seq",
    )
    .bind(operation_id)
    .fetch_all(db)
    .await?;
    if chunks.is_empty() {
        return Ok(None);
    }
    let size = chunks.iter().map(|c| c.1).sum();
    Ok(Some((chunks.into_iter().map(|c| c.0).collect(), size)))
}

/// Chunk `seq` of the archive of export `operation_id`.
pub async fn archive_chunk(
    db: &sqlx::PgPool,
    operation_id: Uuid,
    seq: i32,
) -> Result<Vec<u8>, sqlx::Error> {
    sqlx::query_scalar(
        "select content from export_archive_chunks where operation_id = $1 and seq = $2",
    )
    .bind(operation_id)
    .bind(seq)
    .fetch_one(db)
    .await
}

/// Take an erased person out of the tenant's pending exports: every uploaded line that holds
/// one of `values` (their addresses and names, case-insensitive) and every line of an app's
/// synced `users` collection that is theirs (holds their id). Returns the lines dropped.
pub async fn drop_person(
    tx: &mut PgConnection,
    tenant_id: Uuid,
    user_id: Uuid,
    values: &[String],
) -> Result<u64, sqlx::Error> {
    let parts: Vec<(Uuid, String, String, i32, Vec<u8>)> = sqlx::query_as(
        "select p.operation_id, p.source, p.collection, p.chunk, p.content
         from export_parts p join lifecycle_operations o on o.id = p.operation_id
         where o.tenant_id = $1 and o.status = 'pending'
         for update of p",
    )
    .bind(tenant_id)
    .fetch_all(&mut *tx)
    .await?;
    let user = user_id.to_string();
    let values: Vec<String> = values.iter().map(|v| v.to_lowercase()).collect();
    let mut dropped = 0;
    for (operation_id, source, collection, chunk, content) in parts {
        let text = String::from_utf8_lossy(&content);
        let mut kept = String::new();
        let mut lines = 0i64;
        let mut changed = false;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let lower = line.to_lowercase();
            let theirs = (collection == "users" && line.contains(&user))
                || values.iter().any(|v| lower.contains(v.as_str()));
            if theirs {
                dropped += 1;
                changed = true;
            } else {
                kept.push_str(line);
                kept.push('\n');
                lines += 1;
            }
        }
        if changed {
            sqlx::query(
                "update export_parts set content = $5, lines = $6
                 where operation_id = $1 and source = $2 and collection = $3 and chunk = $4",
            )
            .bind(operation_id)
            .bind(&source)
            .bind(&collection)
            .bind(chunk)
            .bind(kept.as_bytes())
            .bind(lines)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(dropped)
}
