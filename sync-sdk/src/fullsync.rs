//! The nightly full sync: repairs whatever drifted between the wrapper and an app's copy.
//!
//! For every loaded tenant it compares per-kind digests (SHA-256 over `id:version` in id order,
//! [`crate::store::digest`]) with the wrapper's and reloads only the tenants that differ. An
//! integrity pass then asks the app for its references to users ([`Integrity`]) and reports
//! those pointing at users that are missing or soft-deleted upstream; the app applies the
//! source specification's soft-delete policy in [`Integrity::on_orphan`] (keep the data, show
//! the user as inactive). One replica runs it at a time, under a Redis lock, on a cron schedule
//! (default `0 0 2 * * *`), and it can be run on demand (`tsync full-sync`).

use std::{future::Future, str::FromStr, sync::Arc, time::Duration};

use fred::{prelude::*, types::scripts::Script};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    contract::StreamKeys,
    loader::Loader,
    store::{EntityKind, TenantStore, digest},
    wrapper_client::LoadError,
};

/// The default schedule: every night at 02:00 UTC (seconds field first).
pub const DEFAULT_SCHEDULE: &str = "0 0 2 * * *";

/// An app record that points at a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reference {
    /// The app's record, e.g. `account:123`.
    pub record: String,
    /// The user it points at.
    pub user_id: Uuid,
}

/// Why a reference is orphaned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrphanReason {
    /// The user does not exist upstream (never did in this tenant, or was purged).
    Missing,
    /// The user was deactivated upstream (and may be reactivated).
    Inactive,
    /// The user was deleted upstream.
    Deleted,
}

impl OrphanReason {
    /// `missing`, `inactive` or `deleted`: what a mark on the app's record says.
    pub fn as_str(self) -> &'static str {
        match self {
            OrphanReason::Missing => "missing",
            OrphanReason::Inactive => "inactive",
            OrphanReason::Deleted => "deleted",
        }
    }
}

/// A reference to a user who is gone or inactive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Orphan {
    /// The tenant.
    pub tenant_id: Uuid,
    /// The app record and the user.
    pub reference: Reference,
    /// Why.
    pub reason: OrphanReason,
}

/// The app's side of the integrity pass. Checks compose: a tuple of checks is a check
/// (`(owners, members)`), each seeing the outcome of every reference (a check ignores the
/// records that are not its own).
pub trait Integrity: Send + Sync + 'static {
    /// The app's records of `tenant_id` that point at users.
    fn references(&self, tenant_id: Uuid) -> impl Future<Output = Vec<Reference>> + Send;
    /// Apply the soft-delete policy to an orphaned record (keep it; mark the owner inactive).
    fn on_orphan(&self, orphan: &Orphan) -> impl Future<Output = ()> + Send;
    /// The reference's user is live again (or always was): clear a mark left by an earlier
    /// pass. By default, nothing.
    fn on_live(&self, tenant_id: Uuid, reference: &Reference) -> impl Future<Output = ()> + Send {
        let _ = (tenant_id, reference);
        async {}
    }
}

impl<I: Integrity> Integrity for Vec<I> {
    async fn references(&self, tenant_id: Uuid) -> Vec<Reference> {
        let mut all = Vec::new();
        for check in self {
            all.extend(check.references(tenant_id).await);
        }
        all
    }
    async fn on_orphan(&self, orphan: &Orphan) {
        for check in self {
            check.on_orphan(orphan).await;
        }
    }
    async fn on_live(&self, tenant_id: Uuid, reference: &Reference) {
        for check in self {
            check.on_live(tenant_id, reference).await;
        }
    }
}

impl<A: Integrity, B: Integrity> Integrity for (A, B) {
    async fn references(&self, tenant_id: Uuid) -> Vec<Reference> {
        let mut all = self.0.references(tenant_id).await;
        all.extend(self.1.references(tenant_id).await);
        all
    }
    async fn on_orphan(&self, orphan: &Orphan) {
        self.0.on_orphan(orphan).await;
        self.1.on_orphan(orphan).await;
    }
    async fn on_live(&self, tenant_id: Uuid, reference: &Reference) {
        self.0.on_live(tenant_id, reference).await;
        self.1.on_live(tenant_id, reference).await;
    }
}

/// An app with no references to check.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoIntegrity;

impl Integrity for NoIntegrity {
    async fn references(&self, _: Uuid) -> Vec<Reference> {
        Vec::new()
    }
    async fn on_orphan(&self, _: &Orphan) {}
}

/// What a run found and did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Tenants compared.
    pub tenants_checked: usize,
    /// Tenants reloaded because their digests differed.
    pub repaired: Vec<Uuid>,
    /// Tenants that could not be checked (wrapper or store errors).
    pub failed: Vec<Uuid>,
    /// Orphaned references.
    pub orphans: Vec<Orphan>,
}

/// Runs full syncs for one app.
pub struct FullSync<S, I> {
    loader: Arc<Loader<S>>,
    store: Arc<S>,
    integrity: Arc<I>,
}

impl<S: TenantStore, I: Integrity> FullSync<S, I> {
    /// A full sync over `store`, reloading through `loader`.
    pub fn new(loader: Arc<Loader<S>>, store: Arc<S>, integrity: Arc<I>) -> Arc<Self> {
        Arc::new(Self {
            loader,
            store,
            integrity,
        })
    }

    /// Whether the tenant's local copy matches the wrapper's digests.
    pub async fn in_sync(&self, tenant_id: Uuid) -> Result<bool, LoadError> {
        let remote = self.loader.client().digest(tenant_id).await?;
        for kind in EntityKind::ALL {
            let local = digest(&self.store.versions(tenant_id, kind).await?);
            if remote.digests.get(kind.name()) != Some(&local) {
                tracing::info!(%tenant_id, kind = kind.name(), "full sync: digest differs");
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One pass over every loaded tenant; `progress(done, total)` after each.
    pub async fn run_once(&self, progress: impl Fn(usize, usize)) -> Result<Report, LoadError> {
        let tenants = self.store.loaded_tenants().await?;
        let mut report = Report::default();
        for (i, tenant_id) in tenants.iter().copied().enumerate() {
            report.tenants_checked += 1;
            let checked = match self.in_sync(tenant_id).await {
                Ok(true) => Ok(()),
                Ok(false) => self
                    .loader
                    .reload(tenant_id)
                    .await
                    .map(|_| report.repaired.push(tenant_id)),
                Err(e) => Err(e),
            };
            match checked {
                Ok(()) => self.integrity_pass(tenant_id, &mut report).await?,
                Err(e) => {
                    tracing::warn!(%tenant_id, error = %e, "full sync: tenant not checked");
                    report.failed.push(tenant_id);
                }
            }
            progress(i + 1, tenants.len());
        }
        metrics::counter!("tsync_fullsync_tenants_checked_total")
            .increment(report.tenants_checked as u64);
        metrics::counter!("tsync_fullsync_tenants_repaired_total")
            .increment(report.repaired.len() as u64);
        metrics::counter!("tsync_fullsync_orphans_total").increment(report.orphans.len() as u64);
        tracing::info!(
            checked = report.tenants_checked,
            repaired = report.repaired.len(),
            failed = report.failed.len(),
            orphans = report.orphans.len(),
            "full sync done"
        );
        Ok(report)
    }

    async fn integrity_pass(&self, tenant_id: Uuid, report: &mut Report) -> Result<(), LoadError> {
        for reference in self.integrity.references(tenant_id).await {
            let user = self
                .store
                .get(EntityKind::User, tenant_id, reference.user_id)
                .await?;
            let person =
                crate::store::Person::from(user.and_then(|u| serde_json::from_value(u.state).ok()));
            let reason = match person {
                crate::store::Person::Live(_) => {
                    self.integrity.on_live(tenant_id, &reference).await;
                    continue;
                }
                crate::store::Person::Deactivated(_) => OrphanReason::Inactive,
                crate::store::Person::Deleted(_) => OrphanReason::Deleted,
                crate::store::Person::Missing => OrphanReason::Missing,
            };
            let orphan = Orphan {
                tenant_id,
                reference,
                reason,
            };
            self.integrity.on_orphan(&orphan).await;
            report.orphans.push(orphan);
        }
        Ok(())
    }

    /// Run on `schedule` (cron with seconds) until cancelled, once per scheduled time across
    /// the app's replicas: the first replica to set that time's marker in Redis runs it (the
    /// marker is never released and lives `lock_ttl`, so a replica that wakes late cannot run
    /// the same time again after the first finished), and a run lock keeps runs from
    /// overlapping: a 15 s lease renewed while the run goes on, so a replica killed mid-run
    /// holds the next runs back for seconds only. Each run is recorded (see [`recent_runs`])
    /// under `replica`'s name.
    #[allow(clippy::too_many_arguments)]
    pub async fn run_scheduled(
        self: Arc<Self>,
        schedule: &str,
        redis: Client,
        keys: StreamKeys,
        app: String,
        replica: String,
        lock_ttl: Duration,
        cancel: CancellationToken,
    ) -> Result<(), cron::error::Error> {
        let schedule = cron::Schedule::from_str(schedule)?;
        let lock = RedisLock::new(redis.clone(), keys.lock(&format!("fullsync:{app}")));
        for next in schedule.upcoming(chrono::Utc) {
            let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {},
            }
            let tick = keys.lock(&format!("fullsync:{app}:{}", next.timestamp_millis()));
            match RedisLock::new(redis.clone(), tick)
                .try_acquire(lock_ttl)
                .await
            {
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::info!(scheduled = %next, "full sync: another replica runs this one");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "full sync: Redis unavailable; skipping this run");
                    continue;
                }
            }
            match lock.try_acquire(RUN_LEASE).await {
                Ok(Some(token)) => {
                    // The run lock is a short lease renewed while the run goes on, so a replica
                    // killed mid-run holds it back for seconds, not for `lock_ttl`.
                    let outcome = tokio::select! {
                        outcome = self.run_once(|_, _| {}) => outcome,
                        () = lock.keep(&token, RUN_LEASE) => Err(LoadError::Unavailable(
                            "full sync: lost its run lock".into(),
                        )),
                    };
                    if let Err(e) = &outcome {
                        tracing::warn!(error = %e, "full sync failed");
                    }
                    let run = FullSyncRun::new(next, &replica, &outcome);
                    if let Err(e) = run.record(&redis, &keys, &app).await {
                        tracing::warn!(error = %e, "full sync: could not record the run");
                    }
                    let _ = lock.release(&token).await;
                }
                Ok(None) => {
                    tracing::warn!(scheduled = %next, "full sync: the previous run is still going; skipping this one")
                }
                Err(e) => tracing::warn!(error = %e, "full sync: lock unavailable"),
            }
        }
        Ok(())
    }
}

/// One full-sync run as recorded in `{ns}:fullsyncs:{app}`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FullSyncRun {
    /// The time the schedule gave this run.
    pub scheduled_for: chrono::DateTime<chrono::Utc>,
    /// The replica that ran it.
    pub replica: String,
    /// When it ended.
    pub ended_at: chrono::DateTime<chrono::Utc>,
    /// Tenants compared.
    pub tenants_checked: usize,
    /// Tenants reloaded because they had drifted.
    pub repaired: usize,
    /// Tenants that could not be checked.
    pub failed: usize,
    /// Orphaned references found.
    pub orphans: usize,
    /// Why the run failed, if it did.
    pub error: Option<String>,
}

/// The run lock's lease, renewed every third of it while a run goes on.
const RUN_LEASE: Duration = Duration::from_secs(15);

/// How many runs `{ns}:fullsyncs:{app}` keeps.
const RUNS_KEPT: i64 = 100;

impl FullSyncRun {
    fn new(
        scheduled_for: chrono::DateTime<chrono::Utc>,
        replica: &str,
        outcome: &Result<Report, LoadError>,
    ) -> Self {
        let report = outcome.as_ref().ok();
        Self {
            scheduled_for,
            replica: replica.to_owned(),
            ended_at: chrono::Utc::now(),
            tenants_checked: report.map_or(0, |r| r.tenants_checked),
            repaired: report.map_or(0, |r| r.repaired.len()),
            failed: report.map_or(0, |r| r.failed.len()),
            orphans: report.map_or(0, |r| r.orphans.len()),
            error: outcome.as_ref().err().map(ToString::to_string),
        }
    }

    async fn record(&self, redis: &Client, keys: &StreamKeys, app: &str) -> Result<(), Error> {
        let key = keys.full_syncs(app);
        let json = serde_json::to_string(self).unwrap_or_default();
        let _: i64 = redis.lpush(&key, json).await?;
        redis.ltrim(&key, 0, RUNS_KEPT - 1).await
    }
}

/// The latest full-sync runs of `app` across its replicas, newest first.
pub async fn recent_runs(
    redis: &Client,
    keys: &StreamKeys,
    app: &str,
) -> Result<Vec<FullSyncRun>, Error> {
    let raw: Vec<String> = redis.lrange(keys.full_syncs(app), 0, RUNS_KEPT - 1).await?;
    Ok(raw
        .iter()
        .filter_map(|r| serde_json::from_str(r).ok())
        .collect())
}

/// A lease in Redis: `SET key token NX PX ttl`, released only by its holder.
pub struct RedisLock {
    redis: Client,
    key: String,
    release: Script,
    renew: Script,
}

impl RedisLock {
    /// A lock on `key`.
    pub fn new(redis: Client, key: String) -> Self {
        let release = Script::from_lua(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
        );
        let renew = Script::from_lua(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end",
        );
        Self {
            redis,
            key,
            release,
            renew,
        }
    }

    /// The holder's token, or None if someone else holds the lock.
    pub async fn try_acquire(&self, ttl: Duration) -> Result<Option<String>, Error> {
        let token = Uuid::now_v7().to_string();
        let set: Option<String> = self
            .redis
            .set(
                &self.key,
                token.as_str(),
                Some(Expiration::PX(ttl.as_millis() as i64)),
                Some(SetOptions::NX),
                false,
            )
            .await?;
        Ok(set.map(|_| token))
    }

    /// Renew the lock's lease to `ttl` every `ttl / 3` while `token` holds it; returns when it
    /// no longer does (expired and taken, or Redis failing for a whole lease).
    pub async fn keep(&self, token: &str, ttl: Duration) {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(ttl / 3).await;
            let renewed: Result<i64, Error> = self
                .renew
                .evalsha_with_reload(
                    &self.redis,
                    self.key.as_str(),
                    vec![token.to_owned(), ttl.as_millis().to_string()],
                )
                .await;
            match renewed {
                Ok(1) => last_renewed = tokio::time::Instant::now(),
                Ok(_) => return,
                Err(e) if last_renewed.elapsed() >= ttl => {
                    tracing::warn!(key = %self.key, error = %e, "lock lease expired");
                    return;
                }
                Err(e) => {
                    tracing::warn!(key = %self.key, error = %e, "lock renewal failed; retrying")
                }
            }
        }
    }

    /// Release the lock if `token` still holds it.
    pub async fn release(&self, token: &str) -> Result<bool, Error> {
        let released: i64 = self
            .release
            .evalsha_with_reload(&self.redis, self.key.as_str(), token)
            .await?;
        Ok(released == 1)
    }
}

#[cfg(feature = "mongo")]
mod field_references {
    use super::*;

    /// The integrity pass over one field of an app collection that holds user ids (documents with
    /// `_id`, `tenantId` and the field), either one id ([`FieldReferences::new`], e.g. `ownerId`) or
    /// an array of ids ([`FieldReferences::array`], e.g. `memberIds`). Each (document, user) is a
    /// reference `"<kind>:<_id>"`. An orphan is kept (the soft-delete policy) and marked with the
    /// reason (`inactive`, `deleted` or `missing`): for a single id in `<field without Id>Orphaned`
    /// (`ownerId` → `ownerOrphaned`), for an array per user in `<field without Ids>Orphaned.<user id>`
    /// (`memberIds` → `memberOrphaned.<id>`). A mark is cleared when a later pass finds the user
    /// live again. Several checks combine as a tuple: `(owners, members)`.
    #[derive(Clone)]
    pub struct FieldReferences {
        collection: mongodb::Collection<mongodb::bson::Document>,
        kind: String,
        field: String,
        mark: String,
        array: bool,
    }

    impl FieldReferences {
        /// References in the single-id `field` of `collection`, reported as `kind:<_id>`.
        pub fn new(
            collection: mongodb::Collection<mongodb::bson::Document>,
            kind: &str,
            field: &str,
        ) -> Self {
            let mark = format!("{}Orphaned", field.strip_suffix("Id").unwrap_or(field));
            Self {
                collection,
                kind: kind.to_owned(),
                field: field.to_owned(),
                mark,
                array: false,
            }
        }

        /// References in `field`, an array of user ids, of `collection`: one reference per element.
        pub fn array(
            collection: mongodb::Collection<mongodb::bson::Document>,
            kind: &str,
            field: &str,
        ) -> Self {
            let mark = format!("{}Orphaned", field.strip_suffix("Ids").unwrap_or(field));
            Self {
                collection,
                kind: kind.to_owned(),
                field: field.to_owned(),
                mark,
                array: true,
            }
        }

        /// The mark's path for `user` on a document, and the filter of this check's document that
        /// still references `user` (so a call meant for another check is a no-op).
        fn target(
            &self,
            tenant_id: uuid::Uuid,
            reference: &Reference,
        ) -> Option<(mongodb::bson::Document, String)> {
            use mongodb::bson::doc;
            let id = reference
                .record
                .strip_prefix(self.kind.as_str())?
                .strip_prefix(':')?;
            let user = reference.user_id.to_string();
            let filter = doc! {"_id": id, "tenantId": tenant_id.to_string(), &self.field: &user};
            let path = if self.array {
                format!("{}.{user}", self.mark)
            } else {
                self.mark.clone()
            };
            Some((filter, path))
        }
    }

    impl Integrity for FieldReferences {
        async fn references(&self, tenant_id: uuid::Uuid) -> Vec<Reference> {
            use mongodb::bson::{Bson, doc};
            let mut out = Vec::new();
            let found = self
                .collection
                .find(doc! {"tenantId": tenant_id.to_string()})
                .projection(doc! {&self.field: 1})
                .await;
            let Ok(mut cursor) = found else {
                tracing::warn!(%tenant_id, kind = %self.kind, "integrity pass could not read references");
                return out;
            };
            while cursor.advance().await.unwrap_or(false) {
                let Ok(d) = cursor.deserialize_current() else {
                    continue;
                };
                let Ok(id) = d.get_str("_id") else { continue };
                let users: Vec<&str> = match d.get(&self.field) {
                    Some(Bson::String(u)) if !self.array => vec![u.as_str()],
                    Some(Bson::Array(a)) if self.array => {
                        a.iter().filter_map(Bson::as_str).collect()
                    }
                    _ => Vec::new(),
                };
                for user_id in users.into_iter().filter_map(|u| u.parse().ok()) {
                    out.push(Reference {
                        record: format!("{}:{id}", self.kind),
                        user_id,
                    });
                }
            }
            out
        }

        async fn on_orphan(&self, orphan: &Orphan) {
            use mongodb::bson::doc;
            let Some((filter, path)) = self.target(orphan.tenant_id, &orphan.reference) else {
                return;
            };
            let marked = self
                .collection
                .update_one(filter, doc! {"$set": {path: orphan.reason.as_str()}})
                .await;
            if let Err(e) = marked {
                tracing::warn!(record = %orphan.reference.record, error = %e, "could not mark an orphan");
            }
        }

        async fn on_live(&self, tenant_id: uuid::Uuid, reference: &Reference) {
            use mongodb::bson::doc;
            let Some((mut filter, path)) = self.target(tenant_id, reference) else {
                return;
            };
            // Only documents that carry the mark: a live reference costs no write.
            filter.insert(path.clone(), doc! {"$exists": true});
            let cleared = self
                .collection
                .update_one(filter, doc! {"$unset": {path: ""}})
                .await;
            if let Err(e) = cleared {
                tracing::warn!(record = %reference.record, error = %e, "could not clear an orphan mark");
            }
        }
    }

    impl FieldReferences {
        /// The checks `manifest` declares, over its collections in `database` (the app's own
        /// collections, under [`crate::store::mongo::APP_COLLECTION_PREFIX`]): what the app runs
        /// nightly and what `tsync full-sync` runs for it.
        pub fn declared(
            database: &mongodb::Database,
            manifest: &crate::contract::AppManifest,
        ) -> Vec<Self> {
            manifest
                .references
                .iter()
                .map(|r| {
                    let collection = crate::store::mongo::app_collection(database, &r.collection);
                    if r.many {
                        Self::array(collection, &r.kind, &r.field)
                    } else {
                        Self::new(collection, &r.kind, &r.field)
                    }
                })
                .collect()
        }
    }
}
#[cfg(feature = "mongo")]
pub use field_references::FieldReferences;
