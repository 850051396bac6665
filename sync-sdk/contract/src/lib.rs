//! # sync-contract
//!
//! The event contract (v1) shared by the wrapper, which produces events, and every app, which
//! consumes them.
//!
//! Both sides compile against these types, so a producer and a consumer can never disagree on a
//! field name. The module guarantees:
//!
//! * **One wire shape.** [`Envelope`] serialises to the camelCase JSON of docs/contract.md, and
//!   [`Envelope::from_json`] reads it back. Unknown fields are ignored (a newer MINOR version may
//!   add some); an unknown MAJOR version is refused with [`ContractError::UnsupportedVersion`].
//! * **Typed payloads.** [`Event`] has one variant per event type, each carrying the aggregate's
//!   new state. A payload that does not match its `eventType` is refused with the field named.
//! * **Stable routing.** [`partition_of`] maps a tenant to a partition stream with a hash that is
//!   pinned by a test vector: changing it would reorder every tenant's history.
//! * **One stream encoding.** [`Envelope::to_stream_fields`] / [`Envelope::from_stream_fields`]
//!   are the only way events are written to and read from a Redis stream entry.

#![warn(missing_docs)]

#[cfg(feature = "openapi")]
pub mod asyncapi;
#[cfg(feature = "redis")]
pub mod dlq;
mod envelope;
mod keys;
mod lifecycle;
mod manifest;
mod payload;
#[cfg(feature = "redis")]
pub mod streams;

pub use envelope::{
    CONTRACT_VERSION, ContractError, Envelope, EventVersion, FIELD_ENVELOPE, stream_fields,
};
pub use keys::{DEFAULT_NAMESPACE, DEFAULT_PARTITIONS, StreamKeys, hash_slot, partition_of};
pub use lifecycle::LifecycleOperation;
pub use manifest::{AppManifest, PaidOperation, ReferenceCheck, suite_links};
pub use payload::{
    CreditAllocated, CreditConfigState, CreditConsumed, CreditGrantChanged, CreditThresholdReached,
    ERASED_NAME, Event, EventType, MembershipState, RoleState, SettingsState, TenantState,
    TenantStatus, UserState, erased_email,
};

/// The grants a fast-path credit stream entry drew, from its `draws` field
/// (`<grant id>:<credits>,…` in the order drawn); a malformed part is skipped.
pub fn credit_draws(field: &str) -> Vec<(uuid::Uuid, i64)> {
    field
        .split(',')
        .filter_map(|part| {
            let (id, amount) = part.split_once(':')?;
            Some((id.parse().ok()?, amount.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests;
