//! [`TenantStore`] on MongoDB. One collection per entity kind (`{_id, tenantId, version,
//! state}`), `tsync_sync` (per-tenant watermarks) and `tsync_processed` (event ids).
//!
//! A batch costs the same three write commands whatever its size, in two round trips and no
//! transaction: one `update` per entity kind of guarded upserts (a document is written only
//! where its stored version is older, and only in its own tenant) together with one `update`
//! of the watermarks (`$max`), then one unordered `insert` of the event ids. Every statement
//! is idempotent on its own, so no multi-document transaction is needed (and no replica set):
//! a crash between the writes leaves the events unrecorded, and their redelivery finds the
//! state written (stale, nothing changes) and records them. Errors go back to the consumer,
//! which retries transient ones without counting them against the event.

use mongodb::{
    Client, ClientSession, Collection, Database, IndexModel,
    bson::{self, Document, doc},
    error::{Error as MongoError, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT},
};
use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::{
    Applied, BatchPlan, EntityKind, LOADING, SnapshotItem, StoreError, SyncState, TenantStore,
    Versioned,
};
use crate::contract::Envelope;

/// The prefix of an app's own collections in its database (`app.accounts`), a namespace apart
/// from the SDK's synced copy (`users`, `roles`, `settings`, `tsync_*`, …).
pub const APP_COLLECTION_PREFIX: &str = "app.";

/// The app's own collection `name` in `database` (under [`APP_COLLECTION_PREFIX`]).
pub fn app_collection(
    database: &mongodb::Database,
    name: &str,
) -> mongodb::Collection<mongodb::bson::Document> {
    database.collection(&format!("{APP_COLLECTION_PREFIX}{name}"))
}

/// A MongoDB-backed store.
#[derive(Debug, Clone)]
pub struct MongoStore {
    client: Client,
    db: Database,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::transient(e)
}

/// Server error codes for data the server will never take: bad value, document too large, key
/// too long.
const REFUSED_DATA: [i32; 3] = [2, 10334, 17280];

/// A driver error, classified: data the server refuses or that cannot be encoded is permanent
/// (bad value, document too large, BSON serialization); the rest is retried.
fn mongo_err(e: MongoError) -> StoreError {
    use mongodb::error::{ErrorKind, WriteFailure};
    let permanent = match e.kind.as_ref() {
        ErrorKind::BsonSerialization(_) | ErrorKind::InvalidArgument { .. } => true,
        ErrorKind::Write(WriteFailure::WriteError(w)) => REFUSED_DATA.contains(&w.code),
        ErrorKind::Command(c) => REFUSED_DATA.contains(&c.code),
        ErrorKind::InsertMany(i) => i
            .write_errors
            .iter()
            .flatten()
            .any(|w| REFUSED_DATA.contains(&w.code)),
        _ => false,
    };
    StoreError {
        message: e.to_string(),
        permanent,
    }
}

impl MongoStore {
    /// A store in database `db`; call [`init`](Self::init) once to create its indexes.
    pub fn new(db: Database) -> Self {
        Self {
            client: db.client().clone(),
            db,
        }
    }

    /// The database the store writes to (apps keep their own collections beside it).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Create collections and indexes (idempotent). Collections must exist before they are
    /// written inside a transaction.
    pub async fn init(&self) -> Result<(), StoreError> {
        let existing = self.db.list_collection_names().await.map_err(err)?;
        let mut names: Vec<&str> = EntityKind::ALL.iter().map(|k| k.name()).collect();
        names.extend([
            "tsync_sync",
            "tsync_processed",
            "tsync_credit_queue",
            "tsync_credit_allowance",
        ]);
        for name in names {
            if !existing.iter().any(|e| e == name) {
                // A concurrent init may create it first; that is fine.
                let _ = self.db.create_collection(name).await;
            }
        }
        for kind in EntityKind::ALL {
            self.entities(kind)
                .create_index(IndexModel::builder().keys(doc! {"tenantId": 1}).build())
                .await
                .map_err(err)?;
        }
        Ok(())
    }

    /// Replace `user_id`'s personal fields in the synced copy with the erased tombstone (the
    /// `user.erased` event does the same when it is applied; this does not wait for it). Returns
    /// how many documents changed (0: not in this copy, or already erased).
    pub async fn erase_user(&self, tenant_id: Uuid, user_id: Uuid) -> Result<u64, StoreError> {
        let filter = doc! {"_id": user_id.to_string(), "tenantId": tenant_id.to_string()};
        let erased = doc! {"$set": {
            "state.email": crate::contract::erased_email(user_id),
            "state.fullName": crate::contract::ERASED_NAME,
            "state.avatarUrl": mongodb::bson::Bson::Null,
            "state.active": false,
        }};
        let changed = self
            .entities(EntityKind::User)
            .update_one(filter, erased)
            .await
            .map_err(err)?;
        Ok(changed.modified_count)
    }

    /// The documents of `tenant_id` in any collection of this database: those carrying its id
    /// as `tenantId`, its sync state (`_id`) and its per-app records (`_id` `<tenant>:…`).
    pub fn tenant_filter(tenant_id: Uuid) -> Document {
        let tenant = tenant_id.to_string();
        let own_keys = format!("^{tenant}:");
        doc! {"$or": [
            {"tenantId": &tenant},
            {"_id": &tenant},
            {"_id": {"$regex": own_keys}},
        ]}
    }

    /// Delete every document of `tenant_id` in this database, the SDK's and the app's own
    /// collections alike (every document an app keeps carries `tenantId`, as the SDK's do),
    /// and the tenant's sync state and credit allowance. Returns the count per collection
    /// (collections with nothing of the tenant left out).
    pub async fn purge_tenant(
        &self,
        tenant_id: Uuid,
    ) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        let filter = Self::tenant_filter(tenant_id);
        let mut counts = std::collections::BTreeMap::new();
        // The sync state first: from then on the consumer treats the tenant as never loaded.
        let mut names = self.db.list_collection_names().await.map_err(err)?;
        names.sort_by_key(|n| n != "tsync_sync");
        for name in names {
            let deleted = self
                .db
                .collection::<Document>(&name)
                .delete_many(filter.clone())
                .await
                .map_err(err)?
                .deleted_count;
            if deleted > 0 {
                counts.insert(name, deleted);
            }
        }
        Ok(counts)
    }

    fn entities(&self, kind: EntityKind) -> Collection<Document> {
        self.db.collection(kind.name())
    }

    fn sync(&self) -> Collection<Document> {
        self.db.collection("tsync_sync")
    }

    fn processed(&self) -> Collection<Document> {
        self.db.collection("tsync_processed")
    }

    /// Write each aggregate of `writes` (event or item index, kind, id, tenant, version, state)
    /// whose version is newer than the stored one: per kind, one `update` command of guarded
    /// upserts (`{_id, tenantId, version < v}`, `$set` version and state). A document that is
    /// as new or newer, or that belongs to another tenant, does not match, and the upsert's
    /// insert fails on `_id` (duplicate key): that statement wrote nothing. No read before, no
    /// transaction: each statement is atomic and idempotent. Returns the indexes written.
    async fn write_newer(
        &self,
        writes: &[(usize, EntityKind, Uuid, Uuid, i64, serde_json::Value)],
    ) -> Result<Vec<usize>, StoreError> {
        let mut changed = Vec::new();
        for kind in EntityKind::ALL {
            let writes: Vec<_> = writes.iter().filter(|w| w.1 == kind).collect();
            for slice in writes.chunks(STATEMENTS_PER_COMMAND) {
                let mut statements = Vec::with_capacity(slice.len());
                for (_, _, id, tenant, version, state) in slice {
                    let state = bson::to_bson(state)
                        .map_err(|e| StoreError::permanent(format!("state of {id}: {e}")))?;
                    statements.push(doc! {
                        "q": {"_id": id.to_string(), "tenantId": tenant.to_string(),
                            "version": {"$lt": *version}},
                        "u": {"$set": {"version": *version, "state": state}},
                        "upsert": true,
                    });
                }
                let command = doc! {"update": kind.name(), "updates": statements, "ordered": false};
                let not_written = self.write_command(command).await?;
                changed.extend(
                    slice
                        .iter()
                        .enumerate()
                        .filter(|(n, _)| !not_written.contains(n))
                        .map(|(_, w)| w.0),
                );
            }
        }
        Ok(changed)
    }

    /// Record the event ids `fresh` (id, tenant) as processed, in one unordered `insert`;
    /// returns the ids that were recorded before (their insert hit the `_id` index).
    async fn record(&self, fresh: &[(Uuid, Uuid)]) -> Result<HashSet<Uuid>, StoreError> {
        let now = bson::DateTime::now();
        let mut seen_before = HashSet::new();
        for slice in fresh.chunks(STATEMENTS_PER_COMMAND) {
            let documents: Vec<Document> = slice
                .iter()
                .map(|(id, tenant)| doc! {"_id": id.to_string(), "tenantId": tenant.to_string(), "at": now})
                .collect();
            let command =
                doc! {"insert": "tsync_processed", "documents": documents, "ordered": false};
            let duplicates = self.write_command(command).await?;
            seen_before.extend(duplicates.into_iter().map(|n| slice[n].0));
        }
        Ok(seen_before)
    }

    /// Run an unordered write command; returns the indexes of its statements that hit a
    /// unique index (duplicate key). Data the server refuses is a permanent error, any other
    /// write error a transient one (the statements that succeeded are idempotent and are sent
    /// again with the retry).
    async fn write_command(&self, command: Document) -> Result<HashSet<usize>, StoreError> {
        let collection = command
            .keys()
            .next()
            .map(|k| command.get_str(k).unwrap_or(k).to_owned())
            .unwrap_or_default();
        let reply = self.db.run_command(command).await.map_err(mongo_err)?;
        if let Ok(concern) = reply.get_document("writeConcernError") {
            let message = concern.get_str("errmsg").unwrap_or("write concern error");
            return Err(StoreError::transient(format!("{collection}: {message}")));
        }
        let mut duplicates = HashSet::new();
        for error in reply
            .get_array("writeErrors")
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e.as_document())
        {
            let code = error.get_i32("code").unwrap_or(0);
            let index = error
                .get_i32("index")
                .ok()
                .and_then(|i| usize::try_from(i).ok());
            match index {
                Some(index) if code == DUPLICATE_KEY => {
                    duplicates.insert(index);
                }
                _ => {
                    let message = error.get_str("errmsg").unwrap_or("write error");
                    let message = format!("{collection}: write error {code}: {message}");
                    return Err(if REFUSED_DATA.contains(&code) {
                        StoreError::permanent(message)
                    } else {
                        StoreError::transient(message)
                    });
                }
            }
        }
        Ok(duplicates)
    }
}

/// Statements per write command: a batch's statements go in commands of this many, well
/// under the server's 16 MB message and 100,000-statement limits.
const STATEMENTS_PER_COMMAND: usize = 1_000;

/// The server's duplicate key error.
const DUPLICATE_KEY: i32 = 11000;

/// How many ids one `{_id: {$in: [...]}}` lookup carries. A batch spread over many tenants
/// looks up hundreds of ids at once; the MongoDB-wire test server checks every document it
/// finds against the whole list (quadratic: with 10,000 tenants the consumer ran at a fifth of
/// its 64-tenant rate), so lookups go in slices. On mongod a slice is one more round trip.
const IDS_PER_LOOKUP: usize = 128;

/// The documents of `coll` whose `_id` is among `ids` (with `projection`), in slices of
/// [`IDS_PER_LOOKUP`].
async fn by_ids(
    coll: &Collection<Document>,
    ids: &[String],
    projection: Option<Document>,
) -> Result<Vec<Document>, MongoError> {
    let mut out = Vec::new();
    for slice in ids.chunks(IDS_PER_LOOKUP) {
        let mut find = coll.find(doc! {"_id": {"$in": slice}});
        if let Some(projection) = &projection {
            find = find.projection(projection.clone());
        }
        let mut cursor = find.await?;
        while cursor.advance().await? {
            out.push(cursor.deserialize_current()?);
        }
    }
    Ok(out)
}

fn sync_state_of(d: &Document) -> SyncState {
    SyncState {
        snapshot_seq: d.get_i64("snapshotSeq").unwrap_or(0),
        last_seq: d.get_i64("lastSeq").unwrap_or(0),
    }
}

impl TenantStore for MongoStore {
    async fn sync_state(&self, tenant_id: Uuid) -> Result<Option<SyncState>, StoreError> {
        let doc = self
            .sync()
            .find_one(doc! {"_id": tenant_id.to_string()})
            .await
            .map_err(err)?;
        Ok(doc.as_ref().map(sync_state_of))
    }

    async fn mark_loaded(&self, tenant_id: Uuid, watermark: i64) -> Result<(), StoreError> {
        self.sync()
            .update_one(
                doc! {"_id": tenant_id.to_string()},
                doc! {"$set": {"snapshotSeq": watermark}, "$max": {"lastSeq": watermark}},
            )
            .upsert(true)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn mark_loading(&self, tenant_id: Uuid) -> Result<(), StoreError> {
        self.sync()
            .update_one(
                doc! {"_id": tenant_id.to_string()},
                doc! {"$set": {"snapshotSeq": LOADING}, "$max": {"lastSeq": 0_i64}},
            )
            .upsert(true)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn upsert_many(
        &self,
        tenant_id: Uuid,
        items: Vec<SnapshotItem>,
    ) -> Result<(), StoreError> {
        let writes: Vec<_> = items
            .into_iter()
            .enumerate()
            .map(|(i, (kind, id, version, state))| (i, kind, id, tenant_id, version, state))
            .collect();
        self.write_newer(&writes).await?;
        Ok(())
    }

    async fn loaded_tenants(&self) -> Result<Vec<Uuid>, StoreError> {
        let mut cursor = self.sync().find(doc! {}).await.map_err(err)?;
        let mut out = Vec::new();
        while cursor.advance().await.map_err(err)? {
            let doc = cursor.deserialize_current().map_err(err)?;
            if let Some(id) = doc.get_str("_id").ok().and_then(|s| s.parse().ok()) {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    async fn loaded_count(&self) -> Result<u64, StoreError> {
        self.sync().count_documents(doc! {}).await.map_err(err)
    }

    async fn versions(
        &self,
        tenant_id: Uuid,
        kind: EntityKind,
    ) -> Result<Vec<(Uuid, i64)>, StoreError> {
        let mut cursor = self
            .entities(kind)
            .find(doc! {"tenantId": tenant_id.to_string()})
            .projection(doc! {"version": 1})
            .await
            .map_err(err)?;
        let mut out = Vec::new();
        while cursor.advance().await.map_err(err)? {
            let doc = cursor.deserialize_current().map_err(err)?;
            let id = doc.get_str("_id").ok().and_then(|s| s.parse().ok());
            if let (Some(id), Ok(v)) = (id, doc.get_i64("version")) {
                out.push((id, v));
            }
        }
        // Sort by the UUID's bytes, as Postgres orders uuid values.
        out.sort();
        Ok(out)
    }

    async fn is_processed(&self, event_id: Uuid) -> Result<bool, StoreError> {
        Ok(self
            .processed()
            .find_one(doc! {"_id": event_id.to_string()})
            .await
            .map_err(err)?
            .is_some())
    }

    async fn processed_among(&self, event_ids: &[Uuid]) -> Result<HashSet<Uuid>, StoreError> {
        let ids: Vec<String> = event_ids.iter().map(Uuid::to_string).collect();
        let found = by_ids(&self.processed(), &ids, Some(doc! {"_id": 1}))
            .await
            .map_err(mongo_err)?;
        Ok(found
            .iter()
            .filter_map(|d| d.get_str("_id").ok()?.parse().ok())
            .collect())
    }

    async fn sync_states(&self, tenants: &[Uuid]) -> Result<HashMap<Uuid, SyncState>, StoreError> {
        let ids: Vec<String> = tenants.iter().map(Uuid::to_string).collect();
        let found = by_ids(&self.sync(), &ids, None).await.map_err(mongo_err)?;
        Ok(found
            .iter()
            .filter_map(|d| Some((d.get_str("_id").ok()?.parse().ok()?, sync_state_of(d))))
            .collect())
    }

    async fn apply_batch(&self, envelopes: &[Envelope]) -> Result<Vec<Applied>, StoreError> {
        if envelopes.is_empty() {
            return Ok(Vec::new());
        }
        // The state first, then the watermark with it, then the ids: each write is idempotent
        // (guarded by version, `$max`, `_id`), so a crash between them leaves the events
        // unrecorded and their redelivery finds the state written (stale) and records them.
        let planned = BatchPlan::new(envelopes, &HashSet::new());
        let watermarks: Vec<Document> = planned
            .last_seqs
            .iter()
            .map(|(tenant, seq)| doc! {"q": {"_id": tenant.to_string()}, "u": {"$max": {"lastSeq": *seq}}})
            .collect();
        let watermarks = async {
            match watermarks.is_empty() {
                true => Ok(HashSet::new()),
                false => {
                    let command =
                        doc! {"update": "tsync_sync", "updates": watermarks, "ordered": false};
                    self.write_command(command).await
                }
            }
        };
        let (changed, _) = tokio::try_join!(self.write_newer(&planned.writes), watermarks)?;
        let seen_before = self
            .record(&BatchPlan::fresh(envelopes, &HashSet::new()))
            .await?;
        // An event recorded before (or by a concurrent apply) is a duplicate; one whose state
        // this call wrote is applied even so (the concurrent apply then wrote nothing).
        Ok(BatchPlan::new(envelopes, &seen_before).outcomes(changed))
    }

    async fn get(
        &self,
        kind: EntityKind,
        tenant_id: Uuid,
        id: Uuid,
    ) -> Result<Option<Versioned>, StoreError> {
        let doc = self
            .entities(kind)
            .find_one(doc! {"_id": id.to_string(), "tenantId": tenant_id.to_string()})
            .await
            .map_err(err)?;
        doc.map(|d| {
            let version = d.get_i64("version").map_err(err)?;
            let state = d
                .get("state")
                .cloned()
                .map(|b| b.into_relaxed_extjson())
                .unwrap_or_default();
            Ok(Versioned { version, state })
        })
        .transpose()
    }

    async fn page(
        &self,
        kind: EntityKind,
        tenant_id: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<(Uuid, Versioned)>, StoreError> {
        let mut filter = doc! {"tenantId": tenant_id.to_string()};
        if let Some(after) = after {
            filter.insert("_id", doc! {"$gt": after.to_string()});
        }
        let mut cursor = self
            .entities(kind)
            .find(filter)
            .sort(doc! {"_id": 1})
            .limit(limit)
            .await
            .map_err(err)?;
        let mut out = Vec::new();
        while cursor.advance().await.map_err(err)? {
            let d = cursor.deserialize_current().map_err(err)?;
            let id = d.get_str("_id").map_err(err)?.parse().map_err(err)?;
            let version = d.get_i64("version").map_err(err)?;
            let state = d
                .get("state")
                .cloned()
                .map(|b| b.into_relaxed_extjson())
                .unwrap_or_default();
            out.push((id, Versioned { version, state }));
        }
        Ok(out)
    }

    async fn credit_cost(
        &self,
        tenant_id: Uuid,
        application: &str,
        operation_code: &str,
    ) -> Result<Option<i64>, StoreError> {
        let filter = doc! {
            "tenantId": tenant_id.to_string(),
            "state.application": application,
            "state.operationCode": operation_code,
            "state.active": true,
        };
        let found = self
            .entities(EntityKind::CreditConfig)
            .find_one(filter)
            .await
            .map_err(err)?;
        Ok(found.and_then(|d| {
            d.get_document("state")
                .ok()
                .and_then(|s| s.get_i64("cost").ok())
        }))
    }

    async fn memberships_of(
        &self,
        tenant_id: Uuid,
        user_id: Uuid,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        let filter = doc! {
            "tenantId": tenant_id.to_string(),
            "state.userId": user_id.to_string(),
            "state.active": true,
        };
        let mut cursor = self
            .entities(EntityKind::Membership)
            .find(filter)
            .await
            .map_err(err)?;
        let mut out = Vec::new();
        while cursor.advance().await.map_err(err)? {
            let d = cursor.deserialize_current().map_err(err)?;
            if let Some(state) = d.get("state") {
                out.push(state.clone().into_relaxed_extjson());
            }
        }
        Ok(out)
    }
}

impl MongoStore {
    async fn enqueue_once(
        &self,
        session: &mut ClientSession,
        c: &crate::credits::offline::QueuedConsumption,
        allowance: i64,
    ) -> Result<crate::credits::offline::Enqueued, MongoError> {
        use crate::credits::offline::Enqueued;
        let queue = self.db.collection::<Document>("tsync_credit_queue");
        let counters = self.db.collection::<Document>("tsync_credit_allowance");
        session.start_transaction().await?;
        if queue
            .find_one(doc! {"_id": &c.operation_id})
            .session(&mut *session)
            .await?
            .is_some()
        {
            session.abort_transaction().await?;
            return Ok(Enqueued::AlreadyQueued);
        }
        let key = format!("{}:{}", c.tenant_id, c.application);
        let used = counters
            .find_one(doc! {"_id": &key})
            .session(&mut *session)
            .await?
            .and_then(|d| d.get_i64("used").ok())
            .unwrap_or(0);
        if used + c.amount > allowance {
            session.abort_transaction().await?;
            return Ok(Enqueued::OverAllowance { queued: used });
        }
        queue
            .insert_one(doc! {
                "_id": &c.operation_id, "tenantId": c.tenant_id.to_string(),
                "application": &c.application, "operationCode": &c.operation_code,
                "amount": c.amount, "quantity": c.quantity, "queuedAt": bson::DateTime::now(),
            })
            .session(&mut *session)
            .await?;
        counters
            .update_one(doc! {"_id": &key}, doc! {"$inc": {"used": c.amount}})
            .upsert(true)
            .session(&mut *session)
            .await?;
        loop {
            match session.commit_transaction().await {
                Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) => continue,
                other => return other.map(|_| Enqueued::Queued),
            }
        }
    }
}

impl crate::credits::offline::CreditQueue for MongoStore {
    async fn enqueue(
        &self,
        c: &crate::credits::offline::QueuedConsumption,
        allowance: i64,
    ) -> Result<crate::credits::offline::Enqueued, StoreError> {
        let mut session = self.client.start_session().await.map_err(err)?;
        for attempt in 1..=8u64 {
            match self.enqueue_once(&mut session, c, allowance).await {
                Ok(outcome) => return Ok(outcome),
                Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) => {
                    let _ = session.abort_transaction().await;
                    tokio::time::sleep(std::time::Duration::from_millis(10 * attempt)).await;
                }
                Err(e) => {
                    let _ = session.abort_transaction().await;
                    return Err(err(e));
                }
            }
        }
        Err(StoreError::transient(
            "offline queue: too many write conflicts",
        ))
    }

    async fn queued(&self) -> Result<Vec<crate::credits::offline::QueuedConsumption>, StoreError> {
        let mut cursor = self
            .db
            .collection::<Document>("tsync_credit_queue")
            .find(doc! {})
            .sort(doc! {"queuedAt": 1, "_id": 1})
            .await
            .map_err(err)?;
        let mut out = Vec::new();
        while cursor.advance().await.map_err(err)? {
            let d = cursor.deserialize_current().map_err(err)?;
            out.push(crate::credits::offline::QueuedConsumption {
                operation_id: d.get_str("_id").map_err(err)?.to_owned(),
                tenant_id: d.get_str("tenantId").map_err(err)?.parse().map_err(err)?,
                application: d.get_str("application").map_err(err)?.to_owned(),
                operation_code: d.get_str("operationCode").map_err(err)?.to_owned(),
                quantity: d.get_i64("quantity").unwrap_or(1),
                amount: d.get_i64("amount").map_err(err)?,
            });
        }
        Ok(out)
    }

    async fn dequeue(&self, operation_id: &str) -> Result<(), StoreError> {
        let queue = self.db.collection::<Document>("tsync_credit_queue");
        let removed = queue
            .find_one_and_delete(doc! {"_id": operation_id})
            .await
            .map_err(err)?;
        if let Some(d) = removed {
            let key = format!(
                "{}:{}",
                d.get_str("tenantId").unwrap_or_default(),
                d.get_str("application").unwrap_or_default()
            );
            let amount = d.get_i64("amount").unwrap_or(0);
            self.db
                .collection::<Document>("tsync_credit_allowance")
                .update_one(doc! {"_id": key}, doc! {"$inc": {"used": -amount}})
                .await
                .map_err(err)?;
        }
        Ok(())
    }
}
