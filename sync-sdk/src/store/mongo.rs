//! [`TenantStore`] on MongoDB. One collection per entity kind (`{_id, tenantId, version,
//! state}`), `tsync_sync` (per-tenant watermarks) and `tsync_processed` (event ids). `apply` runs
//! in a multi-document transaction (MongoDB needs a replica set for that), retried on transient
//! transaction errors such as write conflicts.

use mongodb::{
    Client, ClientSession, Collection, Database, IndexModel,
    bson::{self, Document, doc},
    error::{Error as MongoError, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT},
};
use uuid::Uuid;

use super::{
    Applied, EntityKind, LOADING, SnapshotItem, StoreError, SyncState, TenantStore, Versioned,
    state_of,
};
use crate::contract::Envelope;

/// A MongoDB-backed store.
#[derive(Debug, Clone)]
pub struct MongoStore {
    client: Client,
    db: Database,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
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

    fn entities(&self, kind: EntityKind) -> Collection<Document> {
        self.db.collection(kind.name())
    }

    fn sync(&self) -> Collection<Document> {
        self.db.collection("tsync_sync")
    }

    fn processed(&self) -> Collection<Document> {
        self.db.collection("tsync_processed")
    }

    async fn apply_once(
        &self,
        session: &mut ClientSession,
        envelope: &Envelope,
    ) -> Result<Applied, MongoError> {
        session.start_transaction().await?;
        let event_id = envelope.event_id.to_string();
        let tenant = envelope.tenant_id.to_string();
        if self
            .processed()
            .find_one(doc! {"_id": &event_id})
            .session(&mut *session)
            .await?
            .is_some()
        {
            session.abort_transaction().await?;
            return Ok(Applied::Duplicate);
        }
        self.processed()
            .insert_one(doc! {"_id": &event_id, "tenantId": &tenant, "at": bson::DateTime::now()})
            .session(&mut *session)
            .await?;
        let mut outcome = Applied::Applied;
        if let Some((kind, id, version, state)) = state_of(envelope) {
            let coll = self.entities(kind);
            let id = id.to_string();
            let current = coll
                .find_one(doc! {"_id": &id})
                .session(&mut *session)
                .await?;
            let current_version = current.as_ref().and_then(|d| d.get_i64("version").ok());
            if current_version.is_some_and(|v| v >= version) {
                outcome = Applied::Stale;
            } else {
                let state = bson::to_bson(&state).map_err(|e| MongoError::custom(e.to_string()))?;
                coll.replace_one(
                    doc! {"_id": &id},
                    doc! {"_id": &id, "tenantId": &tenant, "version": version, "state": state},
                )
                .upsert(true)
                .session(&mut *session)
                .await?;
            }
        }
        self.sync()
            .update_one(
                doc! {"_id": &tenant},
                doc! {"$max": {"lastSeq": envelope.seq}},
            )
            .session(&mut *session)
            .await?;
        loop {
            match session.commit_transaction().await {
                Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) => continue,
                other => return other.map(|_| outcome),
            }
        }
    }
}

fn is_duplicate_key(e: &MongoError) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => e.to_string().contains("E11000") || e.to_string().contains("duplicate key"),
    }
}

impl TenantStore for MongoStore {
    async fn sync_state(&self, tenant_id: Uuid) -> Result<Option<SyncState>, StoreError> {
        let doc = self
            .sync()
            .find_one(doc! {"_id": tenant_id.to_string()})
            .await
            .map_err(err)?;
        Ok(doc.map(|d| SyncState {
            snapshot_seq: d.get_i64("snapshotSeq").unwrap_or(0),
            last_seq: d.get_i64("lastSeq").unwrap_or(0),
        }))
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
        let tenant = tenant_id.to_string();
        for (kind, id, version, state) in items {
            let id = id.to_string();
            let state = bson::to_bson(&state).map_err(err)?;
            // Only a newer version replaces; an existing newer document makes the upsert try an
            // insert of its _id, which fails as a duplicate: that is the "keep the newer" case.
            let result = self
                .entities(kind)
                .replace_one(
                    doc! {"_id": &id, "version": {"$lt": version}},
                    doc! {"_id": &id, "tenantId": &tenant, "version": version, "state": state},
                )
                .upsert(true)
                .await;
            match result {
                Ok(_) => {}
                Err(e) if is_duplicate_key(&e) => {}
                Err(e) => return Err(err(e)),
            }
        }
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

    async fn apply(&self, envelope: &Envelope) -> Result<Applied, StoreError> {
        let mut session = self.client.start_session().await.map_err(err)?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.apply_once(&mut session, envelope).await {
                Ok(outcome) => return Ok(outcome),
                Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) && attempts < 5 => {
                    let _ = session.abort_transaction().await;
                    tokio::time::sleep(std::time::Duration::from_millis(10 * attempts)).await;
                }
                Err(e) => {
                    let _ = session.abort_transaction().await;
                    return Err(err(e));
                }
            }
        }
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
                "amount": c.amount, "queuedAt": bson::DateTime::now(),
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
        Err(StoreError("offline queue: too many write conflicts".into()))
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
