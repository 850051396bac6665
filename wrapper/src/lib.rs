//! The Tenantsync wrapper: identity, tenants and credits in Postgres, every change published
//! through a transactional outbox.

/// The wrapper's schema migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
