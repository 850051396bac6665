//! The Tenantsync wrapper: the single source of truth for identity, tenants and credits.
//!
//! Every change it accepts is written to Postgres together with its event in the outbox, in one
//! transaction ([`outbox`]); the relay publishes the outbox to Redis Streams. `main.rs` only
//! parses the configuration ([`config`]) and calls [`startup`].

pub mod api;
pub mod audit;
pub mod auth;
pub mod command;
pub mod config;
pub mod context;
pub mod credit_ingest;
pub mod error;
pub mod extract;
pub mod grant_jobs;
pub mod identity;
pub mod jobs;
pub mod lag_history;
pub mod lifecycle;
pub mod meters;
pub mod mirror;
pub mod model;
pub mod outbox;
pub mod public_net;
pub mod redis_acl;
pub mod relay;
pub mod startup;
pub mod state;
pub mod validate;
pub mod webhooks;

/// The wrapper's schema migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
