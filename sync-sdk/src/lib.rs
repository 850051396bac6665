//! # sync-sdk
//!
//! Embed Tenantsync in an app service. The wrapper owns identity, tenants and credits and
//! publishes every change as an event on Redis Streams; this crate is everything an app needs
//! to keep its own copy of that data current:
//!
//! * [`contract`] — the event envelope (contract v1), typed payloads, stream keys and the
//!   tenant → partition function, shared with the wrapper so both sides agree on every field.
//! * [`store`] — the app-side copy of tenant data ([`store::TenantStore`]), on MongoDB
//!   (feature `mongo`) or Postgres (feature `postgres`), applied idempotently by version.
//! * [`consumer`] — the stream consumer: ordered per partition, retries with backoff, dead
//!   letters, takeover of a crashed consumer's entries, gap detection, graceful shutdown.
//! * [`dlq`] — list, re-drive and purge dead letters; per-group lag (also the `tsync` CLI).
//! * [`loader`], [`fullsync`] — lazy loading of a tenant on its first visit, and the nightly
//!   full sync that repairs drift; [`wrapper_client`] — the app's calls to the wrapper.
//! * [`credits`] — consuming credits: direct, on the Redis fast path, or offline with a queue.
//! * `auth`, `web`, `http`, `app` (feature `axum` / `app`) — session verification bound to the
//!   request's tenant, browser pages (sign-in redirect, 403 page, dashboard header), serving by
//!   tenant availability, and the whole plumbing of an app service.
//! * `csrf`, `html` (feature `axum`) — the Origin check for cookie-authenticated writes and the
//!   page layout, from the `sync-web` crate the wrapper shares.
//!
//! These docs are built with every feature (`cargo doc -p sync-sdk --all-features`, and so on
//! docs.rs); items behind a feature say which.
//!
//! **Start with [`guide`]: your first app**, from dependencies to a registered, routed,
//! tested app. The examples below are the layers underneath, for those who embed the consumer
//! without the app kit.
//!
//! ## Example: keeping a store current (low level)
//!
//! ```no_run
//! use std::sync::Arc;
//! use sync_sdk::{consumer::{Consumer, ConsumerConfig, Handler, HandlerError}, contract::*};
//! use sync_sdk::store::mongo::MongoStore;
//!
//! struct Crm;
//! impl Handler for Crm {
//!     async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
//!         if let Event::UserEmailChanged(user) = &envelope.event {
//!             println!("refresh cached owner email of {} to {}", user.id, user.email);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use fred::prelude::*;
//! let redis = Builder::from_config(Config::from_url("redis://127.0.0.1:6379")?).build()?;
//! redis.init().await?;
//! let mongo = mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017/").await?;
//! let store = Arc::new(MongoStore::new(mongo.database("crm")));
//! store.init().await?;
//! let config = ConsumerConfig::new("crm", StreamKeys::default());
//! let cancel = tokio_util::sync::CancellationToken::new();
//! Consumer::new(redis, store, Arc::new(Crm), config).run(cancel).await?;
//! # Ok(()) }
//! ```
//!
//! ## Example: decoding an event read from a stream
//!
//! ```
//! use sync_sdk::contract::{Envelope, Event, StreamKeys};
//!
//! let entry = [("envelope", r#"{
//!     "eventId": "0192f0c4-7b6a-7c3e-8a1b-2c3d4e5f6a7b",
//!     "eventType": "user.email_changed",
//!     "eventVersion": "1.1",
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

#[cfg(feature = "app")]
pub mod app;
#[cfg(feature = "axum")]
pub mod auth;
#[cfg(feature = "cli")]
pub mod cli;
pub mod consumer;
pub mod credits;
pub use sync_contract::dlq;
pub mod fullsync;
#[cfg(feature = "axum")]
pub mod http;
#[cfg(feature = "app")]
pub mod idempotency;
#[cfg(feature = "mongo")]
pub mod lifecycle;
pub mod loader;
pub mod meters;
pub mod status;
pub mod store;
#[cfg(feature = "axum")]
pub mod web;
pub mod wrapper_client;

#[cfg(feature = "app")]
#[doc = include_str!("../GUIDE.md")]
pub mod guide {}

/// The event contract (the `sync-contract` crate, shared with the wrapper).
pub use sync_contract as contract;
/// A reconnecting Redis client and one consumer-group read (`sync_contract::streams`).
pub use sync_contract::streams as redis;
/// Logs and traces: `telemetry::init` in an app's `main`, W3C trace context across services.
pub use sync_telemetry as telemetry;
#[cfg(feature = "axum")]
pub use sync_web::{csrf, html};

// The crates an app uses with the SDK, at the versions it was built with: an app outside this
// workspace depends on `sync-sdk` alone for them (plus `serde` and `clap` for their derives).
#[cfg(feature = "app")]
pub use anyhow;
#[cfg(feature = "axum")]
pub use axum;
pub use fred;
#[cfg(feature = "mongo")]
pub use mongodb;
pub use serde_json;
#[cfg(feature = "postgres")]
pub use sqlx;
pub use tokio;
pub use tokio_util;
pub use uuid;
