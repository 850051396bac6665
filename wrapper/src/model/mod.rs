//! The model: the wrapper's data in Postgres, one module per aggregate. A module owns its row
//! types, its queries and its versioned changes, each written with its outbox event (and its
//! audit entry) in the caller's transaction or its own; keyset paging is written once
//! ([`paging`]), identifiers are typed ([`ids`]).
//!
//! The layers: HTTP (`api/`, `auth/`) authorizes, parses and shapes answers, and calls the
//! model; the model calls `outbox`, `audit` and Postgres, never HTTP. Not every aggregate is
//! here yet: the handlers that still run SQL themselves are listed by `scripts/sql-outside-model`
//! (README, known limits).

pub mod apps;
pub mod credits;
pub mod grants;
pub mod hosts;
pub mod ids;
pub mod limits;
pub mod memberships;
pub mod paging;
pub mod roles;
pub mod settings;
pub mod tenants;
pub mod users;
pub mod webhooks;
