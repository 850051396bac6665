//! The state every handler shares (cheap to clone): the database, Redis, keys, settings, the
//! host cache and the OpenID Connect providers. Built by `startup`.

use std::sync::Arc;

use sqlx::PgPool;
use sync_contract::StreamKeys;
use sync_telemetry::PrometheusHandle;

use crate::{config::Settings, domain::hosts::DomainCache, identity::keys::KeyStore};

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The wrapper's database.
    pub db: PgPool,
    /// Redis (event streams).
    pub redis: fred::clients::Client,
    /// Signing keys.
    pub keys: Arc<KeyStore>,
    /// Settings.
    pub settings: Arc<Settings>,
    /// Stream key names.
    pub stream_keys: StreamKeys,
    /// Host → tenant cache.
    pub domains: Arc<DomainCache>,
    /// Prometheus exporter handle.
    pub metrics: PrometheusHandle,
    /// OpenID Connect providers for browser sign-in.
    pub oidc: Arc<crate::identity::oidc::Oidc>,
}

impl AppState {
    /// The credit mirrors in Redis, checked against the ledger.
    pub fn mirror(&self) -> crate::mirror::Mirror {
        crate::mirror::Mirror::new(
            self.db.clone(),
            self.redis.clone(),
            self.stream_keys.clone(),
        )
    }
}
