//! Lifecycle operations an app carries out and confirms: erasing a user, purging a tenant.
//!
//! The wrapper puts each operation on the lifecycle stream (`{ns}:lifecycle`) until every
//! registered app has sent a receipt; [`LifecycleWorker`] reads it with the app's consumer group
//! (one per app, spread over its replicas), does the work and answers
//! `PUT /api/sync/operations/{id}/receipt` with what it removed. The guarantees:
//!
//! * **Done once confirmed.** An entry is acknowledged only after the wrapper recorded the
//!   receipt; a failure (the store, a hook, the wrapper unreachable) leaves it pending, and it
//!   is taken up again after `retry_after` — by this replica, or by another if this one died.
//!   A failure is reported as a `failed` receipt with its reason, so the operation shows it.
//! * **Idempotent.** Erasing twice or purging an empty tenant changes nothing and confirms
//!   again; the wrapper keeps the last receipt of each app.
//! * **No race with the consumer.** An erasure or a purge holds the tenant's turn (as a load
//!   does), so no batch of the tenant is half-way in this process while it runs. Replicas of
//!   an app do not share turns: a batch in flight in another replica at that moment can write
//!   the tenant's documents back (README, known limits).
//! * **Whatever the tenant's state.** Unlike events, operations do not wait for the tenant to
//!   be loaded: an app that never loaded a tenant confirms that it holds nothing of it.
//!
//! What the SDK does itself: an erasure replaces the user's personal fields in the synced copy
//! with the tombstone (`[Deleted User]`); a purge deletes every document of the tenant in the
//! app's database (the SDK's collections and the app's own: every document carries
//! `tenantId`), and its re-sync journal entry in Redis; an export uploads those same documents,
//! collection by collection, as JSON Lines. Data an app keeps elsewhere is its
//! [`LifecycleHooks`]' to handle.

use std::{collections::HashMap, pin::Pin, sync::Arc, time::Duration};

use fred::prelude::*;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{contract::StreamKeys, store::mongo::MongoStore, wrapper_client::WrapperClient};

/// A boxed future of a hook's outcome: what it removed (for the receipt), or why it failed.
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, String>> + Send + 'a>>;

/// What an app removes beyond the SDK's own work (see the module docs). The defaults do
/// nothing: enough for an app whose data lives in its database with `tenantId` and refers to
/// users by id.
pub trait LifecycleHooks: Send + Sync + 'static {
    /// Anonymise or delete what the app keeps about `user_id` outside the synced copy (a cache
    /// of names, an email in a free-text field). Called after the synced copy was erased.
    fn erase_user(&self, tenant_id: Uuid, user_id: Uuid) -> HookFuture<'_> {
        let _ = (tenant_id, user_id);
        Box::pin(async { Ok(Value::Null) })
    }

    /// What the app keeps of `tenant_id` outside its database, for the tenant's export: a JSON
    /// object of `name → [documents]`, each exported as `<app>/<name>.jsonl` beside the
    /// database's collections. The default adds nothing.
    fn export_tenant(&self, tenant_id: Uuid) -> HookFuture<'_> {
        let _ = tenant_id;
        Box::pin(async { Ok(json!({})) })
    }

    /// Delete what the app keeps of `tenant_id` outside its database (files, other stores).
    /// Called before the SDK deletes the tenant's documents.
    fn purge_tenant(&self, tenant_id: Uuid) -> HookFuture<'_> {
        let _ = tenant_id;
        Box::pin(async { Ok(Value::Null) })
    }
}

/// Hooks that add nothing to the SDK's work.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl LifecycleHooks for NoHooks {}

/// Reads the lifecycle stream for one app replica (see the module docs).
pub struct LifecycleWorker {
    redis: Client,
    keys: StreamKeys,
    app: String,
    replica: String,
    client: Arc<WrapperClient>,
    store: Arc<MongoStore>,
    loader: Arc<crate::loader::Loader<MongoStore>>,
    hooks: Arc<dyn LifecycleHooks>,
    retry_after: Duration,
}

/// A stream entry: its id and fields.
type Entry = (String, HashMap<String, String>);

/// One command read from the stream.
#[derive(Debug)]
struct Command {
    operation: Uuid,
    kind: String,
    tenant: Uuid,
    user: Option<Uuid>,
}

impl Command {
    fn parse(fields: &HashMap<String, String>) -> Option<Self> {
        let uuid = |name: &str| fields.get(name).and_then(|v| v.parse().ok());
        Some(Self {
            operation: uuid("operationId")?,
            kind: fields.get("kind")?.clone(),
            tenant: uuid("tenantId")?,
            user: uuid("userId"),
        })
    }
}

impl LifecycleWorker {
    /// A worker of the replica `config` describes (its app's group, its consumer name);
    /// failed operations are taken up again after 5 s.
    pub fn new(
        redis: Client,
        config: &crate::consumer::ConsumerConfig,
        client: Arc<WrapperClient>,
        store: Arc<MongoStore>,
        loader: Arc<crate::loader::Loader<MongoStore>>,
        hooks: Arc<dyn LifecycleHooks>,
    ) -> Self {
        Self {
            redis,
            keys: config.keys.clone(),
            app: config.app.clone(),
            replica: config.consumer.clone(),
            client,
            store,
            loader,
            hooks,
            retry_after: Duration::from_secs(5),
        }
    }

    /// Read and carry out operations until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        let stream = self.keys.lifecycle();
        // The blocking read holds its connection: one of its own, as the consumer's readers.
        let reader = self.redis.clone_new();
        let _connection = reader.connect();
        let mut failures = 0u32;
        while !cancel.is_cancelled() {
            let round = async {
                // From the stream's start: an app that starts after an operation was sent
                // still answers it (answering a finished one again changes nothing).
                let created: Result<(), Error> = self
                    .redis
                    .xgroup_create(&stream, self.app.as_str(), "0", true)
                    .await;
                if let Err(e) = created
                    && !e.details().contains("BUSYGROUP")
                {
                    return Err(e);
                }
                let (_, stale): (String, Vec<Entry>) = self
                    .redis
                    .xautoclaim_values(
                        &stream,
                        self.app.as_str(),
                        self.replica.as_str(),
                        self.retry_after.as_millis() as u64,
                        "0-0",
                        Some(10),
                        false,
                    )
                    .await?;
                let fresh = sync_contract::streams::read_group(
                    &reader,
                    &self.app,
                    &self.replica,
                    &stream,
                    10,
                    Some(Duration::from_secs(1)),
                )
                .await?;
                for (id, fields) in stale.into_iter().chain(fresh) {
                    if self.carry_out(&stream, &id, &fields).await {
                        let _: i64 = self.redis.xack(&stream, self.app.as_str(), &id).await?;
                    }
                }
                Ok::<_, Error>(())
            };
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = round => r,
            };
            match result {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    let delay = Duration::from_millis(200 * u64::from(failures.min(25)));
                    tracing::warn!(error = %e, ?delay, "lifecycle: reading the stream failed");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {},
                    }
                }
            }
        }
    }

    /// Carry out one command and send the receipt; true when the wrapper has it, or the entry
    /// was dead-lettered (acknowledge).
    async fn carry_out(&self, stream: &str, id: &str, fields: &HashMap<String, String>) -> bool {
        let Some(command) = Command::parse(fields) else {
            return self
                .dead_letter(stream, id, fields, "an unreadable lifecycle command")
                .await;
        };
        // The stream is not proof: the wrapper must vouch for the operation before anything is
        // deleted or handed out (see sync_contract::LifecycleOperation).
        match self.client.operation(command.operation).await {
            Ok(op) if op.proves(&command.kind, command.tenant, command.user) => {}
            // Confirmed already by every app: a late copy of the command, nothing to do.
            Ok(op) if op.status == "done" && op.kind == command.kind => return true,
            Ok(_) => {
                return self
                    .dead_letter(
                        stream,
                        id,
                        fields,
                        "unproven lifecycle command: the wrapper's operation differs",
                    )
                    .await;
            }
            Err(crate::wrapper_client::LoadError::NotFound) => {
                return self
                    .dead_letter(
                        stream,
                        id,
                        fields,
                        "unproven lifecycle command: the wrapper knows no such operation",
                    )
                    .await;
            }
            // The wrapper cannot answer now: the entry stays pending and is tried again.
            Err(e) => {
                tracing::warn!(operation = %command.operation, error = %e,
                    "lifecycle: the operation could not be checked with the wrapper; retried");
                return false;
            }
        }
        let outcome = match command.kind.as_str() {
            "erase_user" => match command.user {
                Some(user) => self.erase(command.tenant, user).await,
                None => Err("an erasure without userId".to_owned()),
            },
            "purge_tenant" => self.purge(command.tenant).await,
            "export_tenant" => self.export(command.operation, command.tenant).await,
            other => Err(format!("unknown operation kind `{other}`")),
        };
        let receipt = match &outcome {
            Ok(details) => json!({"replica": self.replica, "status": "done", "details": details}),
            Err(reason) => json!({"replica": self.replica, "status": "failed", "reason": reason}),
        };
        match self.client.receipt(command.operation, &receipt).await {
            Ok(()) => {
                tracing::info!(operation = %command.operation, kind = command.kind,
                    tenant_id = %command.tenant, ok = outcome.is_ok(), "lifecycle: receipt sent");
                outcome.is_ok()
            }
            // The wrapper forgot the operation: nothing left to confirm.
            Err(crate::wrapper_client::LoadError::NotFound) => true,
            Err(e) => {
                tracing::warn!(operation = %command.operation, error = %e,
                    "lifecycle: receipt not sent; retried");
                false
            }
        }
    }

    /// Park entry `id` in the app's dead letters, changing nothing else; true once it is there
    /// (then the entry is acknowledged).
    async fn dead_letter(
        &self,
        stream: &str,
        id: &str,
        fields: &HashMap<String, String>,
        why: &str,
    ) -> bool {
        metrics::counter!("tsync_lifecycle_unproven_total", "app" => self.app.clone()).increment(1);
        tracing::warn!(
            ?fields,
            entry = id,
            why,
            "lifecycle: command refused; dead-lettered"
        );
        let letter = crate::contract::dlq::DeadLetter::new(stream, id, fields, why.to_owned(), 0);
        match crate::contract::dlq::push(&self.redis, &self.keys, &self.app, &letter).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "lifecycle: dead-lettering failed; retried");
                false
            }
        }
    }

    async fn erase(&self, tenant: Uuid, user: Uuid) -> Result<Value, String> {
        let _turn = self.loader.exclusive(tenant).await;
        let synced = self
            .store
            .erase_user(tenant, user)
            .await
            .map_err(|e| e.to_string())?;
        let app = self.hooks.erase_user(tenant, user).await?;
        Ok(json!({"syncedCopy": synced, "app": app}))
    }

    /// Upload every document of the tenant in the app's database, collection by collection,
    /// as JSON Lines in chunks the wrapper's body limit accepts; the line count per collection.
    async fn export(&self, operation: Uuid, tenant: Uuid) -> Result<Value, String> {
        const CHUNK: usize = 512 * 1024;
        let db = self.store.database();
        let filter = MongoStore::tenant_filter(tenant);
        let mut counts = serde_json::Map::new();
        let collections = db
            .list_collection_names()
            .await
            .map_err(|e| e.to_string())?;
        for name in collections {
            let mut cursor = db
                .collection::<mongodb::bson::Document>(&name)
                .find(filter.clone())
                .await
                .map_err(|e| e.to_string())?;
            let (mut chunk, mut buffer, mut lines) = (0, Vec::new(), 0u64);
            while cursor.advance().await.map_err(|e| e.to_string())? {
                let doc = cursor.deserialize_current().map_err(|e| e.to_string())?;
                let json = serde_json::to_vec(&doc).map_err(|e| e.to_string())?;
                buffer.extend_from_slice(&json);
                buffer.push(b'\n');
                lines += 1;
                if buffer.len() >= CHUNK {
                    self.upload(operation, &name, chunk, std::mem::take(&mut buffer))
                        .await?;
                    chunk += 1;
                }
            }
            if !buffer.is_empty() {
                self.upload(operation, &name, chunk, buffer).await?;
            }
            if lines > 0 {
                counts.insert(name, json!(lines));
            }
        }
        let extra = self.hooks.export_tenant(tenant).await?;
        for (name, documents) in extra.as_object().into_iter().flatten() {
            let documents = documents.as_array().map(Vec::as_slice).unwrap_or_default();
            let mut buffer = Vec::new();
            for document in documents {
                buffer.extend_from_slice(document.to_string().as_bytes());
                buffer.push(b'\n');
            }
            self.upload(operation, &format!("hook.{name}"), 0, buffer)
                .await?;
            counts.insert(format!("hook.{name}"), json!(documents.len()));
        }
        Ok(json!({"documents": counts}))
    }

    async fn upload(
        &self,
        operation: Uuid,
        collection: &str,
        chunk: u32,
        bytes: Vec<u8>,
    ) -> Result<(), String> {
        let path = format!("/api/sync/operations/{operation}/parts/{collection}/{chunk}");
        match self
            .client
            .upload(&path, "text/plain; charset=utf-8", bytes)
            .await
        {
            Ok(204) => Ok(()),
            Ok(status) => Err(format!("{path}: HTTP {status}")),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn purge(&self, tenant: Uuid) -> Result<Value, String> {
        // The tenant's turn: a consumer round or a load of it in this process finishes first,
        // and none starts until the purge is done (then the tenant is not loaded: its events
        // are skipped, a visit finds it gone at the wrapper).
        let _turn = self.loader.exclusive(tenant).await;
        let app = self.hooks.purge_tenant(tenant).await?;
        let deleted = self
            .store
            .purge_tenant(tenant)
            .await
            .map_err(|e| e.to_string())?;
        let journal: Result<i64, Error> = self
            .redis
            .hdel(self.keys.resyncs(&self.app), tenant.to_string())
            .await;
        let journal = journal.map_err(|e| e.to_string())?;
        Ok(json!({"documents": deleted, "redisFields": journal, "app": app}))
    }
}
