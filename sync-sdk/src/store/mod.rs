//! The app-side copy of tenant data, behind the [`TenantStore`] trait.
//!
//! A store keeps, per loaded tenant, the latest state of every aggregate (tenant, users, roles,
//! memberships, settings, credit configs) with its `aggregateVersion`, the tenant's sync
//! watermarks, and the ids of the events it has processed. Its one write path,
//! [`TenantStore::apply`], is atomic: the event id is recorded together with the effect, an
//! event seen before is a no-op ([`Applied::Duplicate`]) and an older or equal version changes
//! nothing ([`Applied::Stale`]). That is what makes at-least-once delivery safe (invariant 2).
//!
//! Two implementations pass one conformance suite (`sync_testkit::store_conformance`):
//! [`mongo::MongoStore`] (feature `mongo`) and [`postgres::PostgresStore`] (feature `postgres`).

#[cfg(feature = "mongo")]
pub mod mongo;
#[cfg(feature = "postgres")]
pub mod postgres;

use std::{
    collections::{HashMap, HashSet},
    future::Future,
};

use serde_json::Value;
use uuid::Uuid;

use crate::contract::{Envelope, Event};

/// What [`TenantStore::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The state changed.
    Applied,
    /// The store already had this or a newer version; the event id was recorded.
    Stale,
    /// The event was processed before; nothing happened.
    Duplicate,
}

/// A store failure. Most are transient (a write conflict, a lost connection, a deadlock) and
/// are retried without limit: they are not the event's fault. A *permanent* one (the store
/// refuses this data, e.g. a string Postgres cannot keep in `jsonb`) will fail again on every
/// retry, so the consumer dead-letters the event that caused it.
#[derive(Debug, thiserror::Error)]
#[error("store error: {message}")]
pub struct StoreError {
    /// What went wrong, in the store's words.
    pub message: String,
    /// Whether retrying cannot help.
    pub permanent: bool,
}

impl StoreError {
    /// A failure worth retrying.
    pub fn transient(message: impl std::fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            permanent: false,
        }
    }

    /// A failure caused by the data itself: retrying will not help.
    pub fn permanent(message: impl std::fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            permanent: true,
        }
    }
}

/// Where a tenant's sync stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncState {
    /// The seq the last snapshot covered: stream events at or below it are already in the store.
    /// [`LOADING`] while a snapshot is being loaded: every event is applied meanwhile.
    pub snapshot_seq: i64,
    /// The highest seq applied from the stream (or the snapshot), for gap detection.
    pub last_seq: i64,
}

/// `snapshot_seq` of a tenant whose snapshot is being loaded.
pub const LOADING: i64 = -1;

impl SyncState {
    /// Whether a snapshot is being loaded (the tenant is not ready to serve).
    pub fn is_loading(&self) -> bool {
        self.snapshot_seq == LOADING
    }
}

/// One aggregate of a snapshot: kind, id, version, state.
pub type SnapshotItem = (EntityKind, Uuid, i64, Value);

/// The kinds of aggregate a store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntityKind {
    /// `tenant.*`
    Tenant,
    /// `user.*`
    User,
    /// `role.*`
    Role,
    /// `membership.*`
    Membership,
    /// `settings.updated` (id = tenant id)
    Settings,
    /// `credit.config_updated`
    CreditConfig,
}

impl EntityKind {
    /// Every kind.
    pub const ALL: [EntityKind; 6] = [
        EntityKind::Tenant,
        EntityKind::User,
        EntityKind::Role,
        EntityKind::Membership,
        EntityKind::Settings,
        EntityKind::CreditConfig,
    ];

    /// The collection / kind name, e.g. `users`.
    pub fn name(self) -> &'static str {
        match self {
            EntityKind::Tenant => "tenants",
            EntityKind::User => "users",
            EntityKind::Role => "roles",
            EntityKind::Membership => "memberships",
            EntityKind::Settings => "settings",
            EntityKind::CreditConfig => "credit_configs",
        }
    }

    /// The state an event carries, as (kind, id); None for events that change no state
    /// (credit movements, which handlers react to).
    pub fn of(event: &Event) -> Option<(EntityKind, Uuid)> {
        Some(match event {
            Event::TenantCreated(s)
            | Event::TenantUpdated(s)
            | Event::TenantArchived(s)
            | Event::TenantSuspended(s)
            | Event::TenantResumed(s) => (EntityKind::Tenant, s.id),
            Event::UserCreated(s)
            | Event::UserUpdated(s)
            | Event::UserEmailChanged(s)
            | Event::UserDeactivated(s)
            | Event::UserDeleted(s)
            | Event::UserErased(s) => (EntityKind::User, s.id),
            Event::RoleCreated(s) | Event::RoleUpdated(s) | Event::RoleDeleted(s) => {
                (EntityKind::Role, s.id)
            }
            Event::MembershipGranted(s) | Event::MembershipRevoked(s) => {
                (EntityKind::Membership, s.id)
            }
            Event::SettingsUpdated(s) => (EntityKind::Settings, s.tenant_id),
            Event::CreditConfigUpdated(s) => (EntityKind::CreditConfig, s.id),
            Event::CreditAllocated(_)
            | Event::CreditConsumed(_)
            | Event::CreditGrantChanged(_)
            | Event::CreditThresholdReached(_) => return None,
        })
    }
}

/// A stored aggregate: its version and its state (the event payload's JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    /// `aggregateVersion` of the state.
    pub version: i64,
    /// The state.
    pub state: Value,
}

impl Versioned {
    /// Whether this user is active and not deleted (a deleted or deactivated user is shown as
    /// "[Deleted User]" by the apps: the soft-delete policy keeps their records).
    pub fn is_live_user(&self) -> bool {
        self.state["active"] == true && self.state["deletedAt"].is_null()
    }
}

/// The user `id` of `tenant_id` if they are active and not deleted (typed: apps never walk the
/// synced JSON themselves).
pub async fn live_user<S: TenantStore>(
    store: &S,
    tenant_id: Uuid,
    id: Uuid,
) -> Option<crate::contract::UserState> {
    user(store, tenant_id, id)
        .await
        .filter(crate::contract::UserState::is_live)
}

/// Where a referenced user stands in the synced copy: what an app shows for an owner, a member
/// or an assignee, and what the integrity pass reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Person {
    /// Active and not deleted.
    Live(crate::contract::UserState),
    /// Deactivated by a tenant admin (may come back: their records are kept as they are).
    Deactivated(crate::contract::UserState),
    /// Deleted upstream (shown as "[Deleted User]").
    Deleted(crate::contract::UserState),
    /// Not in the tenant's synced copy at all (never existed here, or another tenant's id).
    Missing,
}

impl Person {
    /// The user's state, unless missing.
    pub fn state(&self) -> Option<&crate::contract::UserState> {
        match self {
            Person::Live(u) | Person::Deactivated(u) | Person::Deleted(u) => Some(u),
            Person::Missing => None,
        }
    }

    /// `None` for a live user, else why not: `inactive`, `deleted` or `missing`.
    pub fn orphan_reason(&self) -> Option<&'static str> {
        match self {
            Person::Live(_) => None,
            Person::Deactivated(_) => Some("inactive"),
            Person::Deleted(_) => Some("deleted"),
            Person::Missing => Some("missing"),
        }
    }
}

impl From<Option<crate::contract::UserState>> for Person {
    fn from(user: Option<crate::contract::UserState>) -> Self {
        match user {
            None => Person::Missing,
            Some(u) if u.is_live() => Person::Live(u),
            Some(u) if u.deleted_at.is_some() => Person::Deleted(u),
            Some(u) => Person::Deactivated(u),
        }
    }
}

/// Where user `id` of `tenant_id` stands: live, deactivated, deleted or missing.
pub async fn person<S: TenantStore>(store: &S, tenant_id: Uuid, id: Uuid) -> Person {
    user(store, tenant_id, id).await.into()
}

/// Where a referenced user stands, as a [`PersonView`] says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PersonStatus {
    /// Active and not deleted.
    Live,
    /// Deactivated by a tenant admin.
    Deactivated,
    /// Deleted upstream.
    Deleted,
    /// Not in the tenant's synced copy.
    Missing,
}

/// A referenced user (an owner, a member, an author) as an app shows them, serializable as is
/// (`{"id", "name", "email", "status"}`): the name while the user exists upstream
/// ("[Deleted User]" once deleted or missing), the address only while they are live. Made
/// from the synced copy at read time, so a change, a deactivation or an erasure at the wrapper
/// shows without the app storing anything about the person.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersonView {
    /// The user id.
    pub id: Uuid,
    /// Their name; "[Deleted User]" once deleted or missing.
    pub name: String,
    /// Their address while they are live.
    pub email: Option<String>,
    /// `live`, `deactivated`, `deleted` or `missing`.
    pub status: PersonStatus,
}

/// What [`PersonView::name`] says of a deleted or missing user.
pub const DELETED_USER: &str = "[Deleted User]";

impl Person {
    /// User `id` as an app shows them.
    pub fn view(self, id: Uuid) -> PersonView {
        let (status, name, email) = match self {
            Person::Live(u) => (PersonStatus::Live, u.full_name, Some(u.email)),
            Person::Deactivated(u) => (PersonStatus::Deactivated, u.full_name, None),
            Person::Deleted(_) => (PersonStatus::Deleted, DELETED_USER.to_owned(), None),
            Person::Missing => (PersonStatus::Missing, DELETED_USER.to_owned(), None),
        };
        PersonView {
            id,
            name,
            email,
            status,
        }
    }
}

impl From<crate::contract::UserState> for PersonView {
    /// A synced user as an app shows them (a page of [`users`] in a people picker).
    fn from(user: crate::contract::UserState) -> Self {
        let id = user.id;
        Person::from(Some(user)).view(id)
    }
}

/// User `id` of `tenant_id` as an app shows them ([`PersonView`]), from the synced copy.
pub async fn person_view<S: TenantStore>(store: &S, tenant_id: Uuid, id: Uuid) -> PersonView {
    person(store, tenant_id, id).await.view(id)
}

/// A page of `tenant_id`'s synced users (deleted ones included; see [`Person`]), in id order,
/// after the user id `after`: the typed listing an app shows in a member picker.
pub async fn users<S: TenantStore>(
    store: &S,
    tenant_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<crate::contract::UserState>, StoreError> {
    let page = store
        .page(EntityKind::User, tenant_id, after, limit)
        .await?;
    Ok(page
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_value(v.state).ok())
        .collect())
}

/// A page of `tenant_id`'s synced roles (deleted ones included: see `RoleState::deleted`), in
/// id order after the role id `after`.
pub async fn roles<S: TenantStore>(
    store: &S,
    tenant_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<crate::contract::RoleState>, StoreError> {
    let page = store
        .page(EntityKind::Role, tenant_id, after, limit)
        .await?;
    Ok(page
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_value(v.state).ok())
        .collect())
}

/// The active memberships of `user_id` in `tenant_id`, typed.
pub async fn memberships<S: TenantStore>(
    store: &S,
    tenant_id: Uuid,
    user_id: Uuid,
) -> Result<Vec<crate::contract::MembershipState>, StoreError> {
    Ok(store
        .memberships_of(tenant_id, user_id)
        .await?
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect())
}

/// The user `id` of `tenant_id` as synced, whatever their state.
pub async fn user<S: TenantStore>(
    store: &S,
    tenant_id: Uuid,
    id: Uuid,
) -> Option<crate::contract::UserState> {
    let found = store
        .get(EntityKind::User, tenant_id, id)
        .await
        .ok()
        .flatten()?;
    serde_json::from_value(found.state).ok()
}

/// The tenant as synced.
pub async fn tenant<S: TenantStore>(
    store: &S,
    tenant_id: Uuid,
) -> Option<crate::contract::TenantState> {
    let found = store
        .get(EntityKind::Tenant, tenant_id, tenant_id)
        .await
        .ok()
        .flatten()?;
    serde_json::from_value(found.state).ok()
}

/// The app-side copy of tenant data. Implementations must make [`apply`](Self::apply) atomic.
pub trait TenantStore: Send + Sync + 'static {
    /// The tenant's sync state, or None if the tenant was never loaded.
    fn sync_state(
        &self,
        tenant_id: Uuid,
    ) -> impl Future<Output = Result<Option<SyncState>, StoreError>> + Send;

    /// Mark the tenant loaded by a snapshot taken at `watermark` (never lowers `last_seq`).
    fn mark_loaded(
        &self,
        tenant_id: Uuid,
        watermark: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Mark the tenant as loading: from now on the consumer applies all its events, so none
    /// committed while the snapshot is read can be missed. [`mark_loaded`](Self::mark_loaded)
    /// ends it.
    fn mark_loading(&self, tenant_id: Uuid) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Write snapshot aggregates, each only if newer than what the store has.
    fn upsert_many(
        &self,
        tenant_id: Uuid,
        items: Vec<SnapshotItem>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every tenant that is loaded (or loading).
    fn loaded_tenants(&self) -> impl Future<Output = Result<Vec<Uuid>, StoreError>> + Send;

    /// How many tenants are loaded (or loading): a count where the store has one, for status
    /// reports that run every few seconds on a store of many tenants.
    fn loaded_count(&self) -> impl Future<Output = Result<u64, StoreError>> + Send {
        async move { Ok(self.loaded_tenants().await?.len() as u64) }
    }

    /// `(id, version)` of every aggregate of one kind of a tenant, in id order.
    fn versions(
        &self,
        tenant_id: Uuid,
        kind: EntityKind,
    ) -> impl Future<Output = Result<Vec<(Uuid, i64)>, StoreError>> + Send;

    /// Whether the event was processed before.
    fn is_processed(&self, event_id: Uuid)
    -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Which of `event_ids` were processed before (one query where the store allows).
    fn processed_among(
        &self,
        event_ids: &[Uuid],
    ) -> impl Future<Output = Result<HashSet<Uuid>, StoreError>> + Send {
        async move {
            let mut out = HashSet::new();
            for id in event_ids {
                if self.is_processed(*id).await? {
                    out.insert(*id);
                }
            }
            Ok(out)
        }
    }

    /// The sync state of each of `tenants` that was ever loaded (one query where the store
    /// allows).
    fn sync_states(
        &self,
        tenants: &[Uuid],
    ) -> impl Future<Output = Result<HashMap<Uuid, SyncState>, StoreError>> + Send {
        async move {
            let mut out = HashMap::new();
            for tenant in tenants {
                if let Some(state) = self.sync_state(*tenant).await? {
                    out.insert(*tenant, state);
                }
            }
            Ok(out)
        }
    }

    /// Apply events: write each aggregate's newest state if it is newer than the stored one,
    /// raise each tenant's `last_seq`, record every event id. Returns one outcome per event, in
    /// order. Inside a batch an event id seen earlier in the batch is [`Applied::Duplicate`],
    /// and an event superseded by a newer version of its aggregate in the same batch is
    /// [`Applied::Stale`] (the end state is what applying them one by one gives).
    ///
    /// An event id must never be recorded without its effect (a redelivery would then skip
    /// it): record it in the same atomic write (Postgres: one statement) or after the effect
    /// is stored (MongoDB). An error may leave part of the batch written, so every write must
    /// be idempotent (versions, `$max`, ids): the batch, or any part of it, is then retried.
    /// The outcome is [`Applied::Applied`] for the call whose write changed the state; when
    /// the same event is applied concurrently, the others report it duplicate (or stale).
    fn apply_batch(
        &self,
        envelopes: &[Envelope],
    ) -> impl Future<Output = Result<Vec<Applied>, StoreError>> + Send;

    /// Apply one event: a batch of one.
    fn apply(
        &self,
        envelope: &Envelope,
    ) -> impl Future<Output = Result<Applied, StoreError>> + Send {
        async move {
            let outcomes = self.apply_batch(std::slice::from_ref(envelope)).await?;
            Ok(outcomes.first().copied().unwrap_or(Applied::Duplicate))
        }
    }

    /// An aggregate of a tenant.
    fn get(
        &self,
        kind: EntityKind,
        tenant_id: Uuid,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<Versioned>, StoreError>> + Send;

    /// Up to `limit` aggregates of `kind` in `tenant_id` with ids after `after`, in id order
    /// (a page of a listing; the last id is the next cursor).
    fn page(
        &self,
        kind: EntityKind,
        tenant_id: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(Uuid, Versioned)>, StoreError>> + Send;

    /// The cost of `operation_code` of `application` in the tenant's active credit config.
    fn credit_cost(
        &self,
        tenant_id: Uuid,
        application: &str,
        operation_code: &str,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// The active memberships of `user_id` in `tenant_id` (their states).
    fn memberships_of(
        &self,
        tenant_id: Uuid,
        user_id: Uuid,
    ) -> impl Future<Output = Result<Vec<Value>, StoreError>> + Send;
}

/// What the synced copy says a user may do in a tenant, right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserAccess {
    /// A live user of an active tenant, with the permissions of their active memberships in
    /// roles that are not deleted.
    Granted {
        /// Permissions, sorted and without duplicates.
        permissions: Vec<String>,
    },
    /// Refused, and why (for the log and the problem's detail).
    Refused(&'static str),
    /// The tenant is suspended: nobody may use it until a platform admin resumes it.
    Suspended,
}

/// The access of `user_id` to `tenant_id` in the synced copy: the tenant must be active, the
/// user must exist there, be active and not deleted; permissions come from the user's active
/// memberships. Every read is of the current copy, so an applied event counts at once.
pub async fn user_access<S: TenantStore>(
    store: &S,
    tenant_id: Uuid,
    user_id: Uuid,
) -> Result<UserAccess, StoreError> {
    let (tenant, user, memberships) = tokio::try_join!(
        store.get(EntityKind::Tenant, tenant_id, tenant_id),
        store.get(EntityKind::User, tenant_id, user_id),
        store.memberships_of(tenant_id, user_id),
    )?;
    match tenant {
        None => return Ok(UserAccess::Refused("the tenant is unknown")),
        Some(t) if t.state["status"] == "suspended" => return Ok(UserAccess::Suspended),
        Some(t) if t.state["status"] != "active" => {
            return Ok(UserAccess::Refused("the tenant is not active"));
        }
        Some(_) => {}
    }
    match user {
        None => return Ok(UserAccess::Refused("the user is unknown in this tenant")),
        Some(u) if !u.is_live_user() => {
            return Ok(UserAccess::Refused("the user is deactivated or deleted"));
        }
        Some(_) => {}
    }
    let mut permissions = Vec::new();
    for m in memberships {
        let Some(role_id) = m["roleId"].as_str().and_then(|r| r.parse().ok()) else {
            continue;
        };
        if let Some(role) = store.get(EntityKind::Role, tenant_id, role_id).await? {
            if role.state["deleted"] == true {
                continue;
            }
            let granted = role.state["permissions"].as_array().into_iter().flatten();
            permissions.extend(granted.filter_map(|p| p.as_str().map(str::to_owned)));
        }
    }
    permissions.sort();
    permissions.dedup();
    Ok(UserAccess::Granted { permissions })
}

/// The digest of one kind, as the wrapper computes it: SHA-256 (hex) over `id:version` lines in
/// id order, joined by newlines.
pub fn digest(versions: &[(Uuid, i64)]) -> String {
    use sha2::{Digest, Sha256};
    let text = versions
        .iter()
        .map(|(id, v)| format!("{id}:{v}"))
        .collect::<Vec<_>>()
        .join("\n");
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a store must write for a batch of events, worked out once for both stores.
#[cfg(any(feature = "mongo", feature = "postgres"))]
pub(crate) struct BatchPlan {
    /// Per event: `Duplicate` (seen before or earlier in the batch), `Applied` for fresh events
    /// that carry no state, `Stale` for the rest until [`BatchPlan::outcomes`] learns which
    /// writes changed a row.
    outcomes: Vec<Applied>,
    /// The newest state per aggregate among fresh events, sorted by (kind, id) so concurrent
    /// batches lock rows in one order: (event index, kind, id, tenant, version, state).
    pub writes: Vec<(usize, EntityKind, Uuid, Uuid, i64, Value)>,
    /// The highest fresh seq per tenant, sorted by tenant.
    pub last_seqs: Vec<(Uuid, i64)>,
}

#[cfg(any(feature = "mongo", feature = "postgres"))]
impl BatchPlan {
    /// Plan `envelopes`, of which `seen_before` were recorded already.
    pub fn new(envelopes: &[Envelope], seen_before: &HashSet<Uuid>) -> Self {
        let mut outcomes = Vec::with_capacity(envelopes.len());
        let mut recorded: HashSet<Uuid> = HashSet::new();
        let mut newest: HashMap<(EntityKind, Uuid), usize> = HashMap::new();
        let mut last_seqs: HashMap<Uuid, i64> = HashMap::new();
        for (i, e) in envelopes.iter().enumerate() {
            if seen_before.contains(&e.event_id) || !recorded.insert(e.event_id) {
                outcomes.push(Applied::Duplicate);
                continue;
            }
            let seq = last_seqs.entry(e.tenant_id).or_insert(e.seq);
            *seq = (*seq).max(e.seq);
            match EntityKind::of(&e.event) {
                None => outcomes.push(Applied::Applied),
                Some(key) => {
                    outcomes.push(Applied::Stale);
                    let slot = newest.entry(key).or_insert(i);
                    // An equal version later in the batch is stale, as it would be one by one.
                    if envelopes[*slot].aggregate_version < e.aggregate_version {
                        *slot = i;
                    }
                }
            }
        }
        let mut writes: Vec<_> = newest
            .into_iter()
            .map(|((kind, id), i)| {
                let e = &envelopes[i];
                let state = e.event.payload_json();
                (i, kind, id, e.tenant_id, e.aggregate_version, state)
            })
            .collect();
        writes.sort_by_key(|w| (w.1.name(), w.2));
        let mut last_seqs: Vec<_> = last_seqs.into_iter().collect();
        last_seqs.sort();
        Self {
            outcomes,
            writes,
            last_seqs,
        }
    }

    /// The highest seq per tenant among `envelopes`, sorted by tenant (what the watermarks move
    /// to when every event is fresh), without serializing any state.
    pub fn last_seqs(envelopes: &[Envelope]) -> Vec<(Uuid, i64)> {
        let mut last: HashMap<Uuid, i64> = HashMap::new();
        for e in envelopes {
            let seq = last.entry(e.tenant_id).or_insert(e.seq);
            *seq = (*seq).max(e.seq);
        }
        let mut last: Vec<_> = last.into_iter().collect();
        last.sort();
        last
    }

    /// Every event that carries state, in batch order: (event id, kind, id, tenant, version,
    /// state). A store that learns which ids were recorded before inside its own write picks
    /// the newest per aggregate among the others itself.
    pub fn candidates(envelopes: &[Envelope]) -> Vec<(Uuid, EntityKind, Uuid, Uuid, i64, Value)> {
        envelopes
            .iter()
            .filter_map(|e| {
                let (kind, id) = EntityKind::of(&e.event)?;
                let state = e.event.payload_json();
                Some((
                    e.event_id,
                    kind,
                    id,
                    e.tenant_id,
                    e.aggregate_version,
                    state,
                ))
            })
            .collect()
    }

    /// Event ids to record: the fresh ones, sorted (one lock order), with their tenant.
    pub fn fresh(envelopes: &[Envelope], seen_before: &HashSet<Uuid>) -> Vec<(Uuid, Uuid)> {
        let mut fresh: Vec<(Uuid, Uuid)> = envelopes
            .iter()
            .filter(|e| !seen_before.contains(&e.event_id))
            .map(|e| (e.event_id, e.tenant_id))
            .collect();
        fresh.sort();
        fresh.dedup_by_key(|f| f.0);
        fresh
    }

    /// The outcomes, given which planned writes (event indexes) changed the store.
    pub fn outcomes(mut self, changed: impl IntoIterator<Item = usize>) -> Vec<Applied> {
        for i in changed {
            self.outcomes[i] = Applied::Applied;
        }
        self.outcomes
    }
}
