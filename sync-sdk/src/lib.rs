//! # sync-sdk
//!
//! Embed Tenantsync in an app service. The wrapper owns identity, tenants and credits and
//! publishes every change as an event on Redis Streams; this crate is everything an app needs
//! to keep its own copy of that data current:
//!
//! * [`contract`] — the event envelope (contract v1), typed payloads, stream keys and the
//!   tenant → partition function, shared with the wrapper so both sides agree on every field.
//!
//! ## Example: decoding an event read from a stream
//!
//! ```
//! use sync_sdk::contract::{Envelope, Event, StreamKeys};
//!
//! let entry = [("envelope", r#"{
//!     "eventId": "0192f0c4-7b6a-7c3e-8a1b-2c3d4e5f6a7b",
//!     "eventType": "user.email_changed",
//!     "eventVersion": "1.0",
//!     "tenantId": "b0a6e370-5d2f-4c1e-9f5b-0c6f1d2e3a4b",
//!     "seq": 42,
//!     "aggregateId": "0192f0c4-0000-7000-8000-000000000001",
//!     "aggregateVersion": 7,
//!     "occurredAt": "2025-10-04T15:30:00.000Z",
//!     "source": "wrapper",
//!     "payload": {
//!         "id": "0192f0c4-0000-7000-8000-000000000001",
//!         "tenantId": "b0a6e370-5d2f-4c1e-9f5b-0c6f1d2e3a4b",
//!         "email": "ada@acme.test", "fullName": "Ada Lovelace", "active": true
//!     }
//! }"#)];
//! let envelope = Envelope::from_stream_fields(entry)?;
//! match &envelope.event {
//!     Event::UserEmailChanged(user) => assert_eq!(user.email, "ada@acme.test"),
//!     other => panic!("unexpected {other:?}"),
//! }
//! // Every event of a tenant goes to one partition stream.
//! let keys = StreamKeys::default();
//! assert_eq!(keys.events_for(envelope.tenant_id), "tsync:events:{5}");
//! # Ok::<(), sync_sdk::contract::ContractError>(())
//! ```
#![warn(missing_docs)]

pub mod contract;

#[cfg(feature = "test-support")]
pub mod test_support;
