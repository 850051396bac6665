//! The app-side copy of tenant data, behind the [`TenantStore`] trait.
//!
//! A store keeps, per loaded tenant, the latest state of every aggregate (tenant, users, roles,
//! memberships, settings, credit configs) with its `aggregateVersion`, the tenant's sync
//! watermarks, and the ids of the events it has processed. Its one write path,
//! [`TenantStore::apply`], is atomic: the event id is recorded together with the effect, an
//! event seen before is a no-op ([`Applied::Duplicate`]) and an older or equal version changes
//! nothing ([`Applied::Stale`]). That is what makes at-least-once delivery safe (invariant 2).
//!
//! Two implementations pass one conformance suite (`test_support::store_conformance`):
//! [`mongo::MongoStore`] (feature `mongo`) and [`postgres::PostgresStore`] (feature `postgres`).

#[cfg(feature = "mongo")]
pub mod mongo;
#[cfg(feature = "postgres")]
pub mod postgres;

use std::future::Future;

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

/// A store failure (always worth a retry: the consumer treats it as transient).
#[derive(Debug, thiserror::Error)]
#[error("store error: {0}")]
pub struct StoreError(pub String);

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
            Event::TenantCreated(s) | Event::TenantUpdated(s) | Event::TenantArchived(s) => {
                (EntityKind::Tenant, s.id)
            }
            Event::UserCreated(s)
            | Event::UserUpdated(s)
            | Event::UserEmailChanged(s)
            | Event::UserDeactivated(s)
            | Event::UserDeleted(s) => (EntityKind::User, s.id),
            Event::RoleCreated(s) | Event::RoleUpdated(s) | Event::RoleDeleted(s) => {
                (EntityKind::Role, s.id)
            }
            Event::MembershipGranted(s) | Event::MembershipRevoked(s) => {
                (EntityKind::Membership, s.id)
            }
            Event::SettingsUpdated(s) => (EntityKind::Settings, s.tenant_id),
            Event::CreditConfigUpdated(s) => (EntityKind::CreditConfig, s.id),
            Event::CreditAllocated(_) | Event::CreditConsumed(_) => return None,
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

/// The user `id` of `tenant_id` if they are active and not deleted.
pub async fn live_user<S: TenantStore>(store: &S, tenant_id: Uuid, id: Uuid) -> Option<Versioned> {
    store
        .get(EntityKind::User, tenant_id, id)
        .await
        .ok()
        .flatten()
        .filter(Versioned::is_live_user)
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

    /// `(id, version)` of every aggregate of one kind of a tenant, in id order.
    fn versions(
        &self,
        tenant_id: Uuid,
        kind: EntityKind,
    ) -> impl Future<Output = Result<Vec<(Uuid, i64)>, StoreError>> + Send;

    /// Whether the event was processed before.
    fn is_processed(&self, event_id: Uuid)
    -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Apply the event atomically: record its id, apply its state if newer, raise `last_seq`.
    fn apply(
        &self,
        envelope: &Envelope,
    ) -> impl Future<Output = Result<Applied, StoreError>> + Send;

    /// An aggregate of a tenant.
    fn get(
        &self,
        kind: EntityKind,
        tenant_id: Uuid,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<Versioned>, StoreError>> + Send;
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

/// The state to write for `envelope`, if it carries one: (kind, id, version, JSON state).
#[cfg(any(feature = "mongo", feature = "postgres"))]
pub(crate) fn state_of(envelope: &Envelope) -> Option<(EntityKind, Uuid, i64, Value)> {
    EntityKind::of(&envelope.event).map(|(kind, id)| {
        (
            kind,
            id,
            envelope.aggregate_version,
            envelope.event.payload_json(),
        )
    })
}
